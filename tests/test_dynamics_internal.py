import numpy as np
import pytest
import torch

from brainalign import ValidationError
from brainalign.dynamics.internal import (
    head_scores,
    icl_score,
    internal_states,
    linear_cka,
    model_states,
    participation_ratio,
    twonn_dimension,
)
from brainalign.features import WordFeatures
from brainalign.training import tiny_gpt_neox


def _naive_cka(X, Y):
    n = X.shape[0]
    H = np.eye(n) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def test_linear_cka(rng):
    X = rng.standard_normal((200, 10))
    Q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    assert linear_cka(X, 3.0 * X @ Q + 5.0) == pytest.approx(1.0, abs=1e-10)
    Y = rng.standard_normal((200, 8))
    assert linear_cka(X, Y) < 0.15
    Z = X[:, :4] @ rng.standard_normal((4, 6)) + 0.5 * rng.standard_normal((200, 6))
    assert linear_cka(X, Z) == pytest.approx(_naive_cka(X, Z), rel=1e-9)
    with pytest.raises(ValidationError, match="samples"):
        linear_cka(X, Y[:100])


def test_participation_ratio(rng):
    assert participation_ratio(rng.standard_normal((20000, 6))) == pytest.approx(6.0, rel=0.03)
    line = np.outer(rng.standard_normal(500), rng.standard_normal(12))
    assert participation_ratio(line) == pytest.approx(1.0, abs=1e-9)
    # two directions with variances 1 and 1/4: (1.25)^2 / (1 + 1/16)
    X = rng.standard_normal((50000, 2)) * [1.0, 0.5]
    assert participation_ratio(X) == pytest.approx(1.25**2 / (1 + 1 / 16), rel=0.03)


@pytest.mark.parametrize("d", [2, 5])
def test_twonn_recovers_manifold_dimension(rng, d):
    Z = rng.uniform(size=(2000, d))
    A = np.linalg.qr(rng.standard_normal((20, d)))[0]
    est = twonn_dimension(Z @ A.T)
    assert abs(est - d) < 0.15 * d + 0.2, est
    # duplicated rows (as at the embedding layer) do not break it
    assert abs(twonn_dimension(np.vstack([Z, Z[:500]]) @ A.T) - est) < 0.1 * d


def test_internal_states_from_word_features(rng):
    n_words, hid = 300, 16
    base = rng.standard_normal((n_words, hid))
    Q = np.linalg.qr(rng.standard_normal((hid, hid)))[0]
    arrays = {
        "step0": rng.standard_normal((n_words, hid)),  # unrelated to the final one
        "step100": base,
        "step1000": 2.0 * base @ Q,  # a rotation of step100: CKA 1
    }
    feats = {}
    for i, (name, arr) in enumerate(arrays.items()):
        words = {("a", layer): arr[:120] * (layer + 1) for layer in (0, 1)}
        words.update({("b", layer): arr[120:] * (layer + 1) for layer in (0, 1)})
        feats[name] = WordFeatures(
            "tiny", name, [0, 1], 1, words, ["a", "b"], training={"step": [0, 100, 1000][i], "tokens": [0, 1e5, 1e6][i]}
        )
    ds = internal_states(feats, max_words=250)
    assert ds.sizes == {"checkpoint": 3, "layer": 2}
    assert list(ds["tokens"].values) == [0, 1e5, 1e6]
    assert np.isnan(ds["cka_prev"].sel(checkpoint="step0")).all()
    np.testing.assert_allclose(ds["cka_prev"].sel(checkpoint="step1000"), 1.0, atol=1e-10)
    np.testing.assert_allclose(ds["cka_final"].sel(checkpoint="step100"), 1.0, atol=1e-10)
    assert (ds["cka_final"].sel(checkpoint="step0") < 0.3).all()
    assert (ds["eff_dim"] > 5).all() and (ds["twonn"] > 3).all()
    # plain arrays work the same
    ds2 = internal_states({k: {0: v, 1: 2 * v} for k, v in arrays.items()}, twonn=False, tokens={"step0": 1.0})
    np.testing.assert_allclose(ds2["cka_final"].sel(checkpoint="step100"), 1.0, atol=1e-10)
    assert "twonn" not in ds2 and ds2["tokens"].values[0] == 1.0
    with pytest.raises(ValidationError, match="layers"):
        internal_states(feats, layers=[5])
    with pytest.raises(ValidationError, match="words"):
        internal_states({"a": {0: base}, "b": {0: base[:10]}})


def _repeat_batch(gen, vocab, batch):
    """Random tokens, a random prefix, then a random-length block repeated once: a
    fixed look-back offset cannot solve it, an induction circuit can."""
    L = int(torch.randint(6, 25, (1,), generator=gen))
    P = int(torch.randint(0, 12, (1,), generator=gen))
    r = torch.randint(0, vocab, (batch, L), generator=gen)
    ids = torch.cat([torch.randint(0, vocab, (batch, P), generator=gen), r, r], 1)
    labels = ids.clone()
    labels[:, : P + L] = -100  # only the repeat is predictable
    return ids, labels


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest on a shared machine
    yield
    torch.set_num_threads(n)


def test_induction_heads_form_in_a_two_layer_attention_only_model(one_thread):
    V = 32
    model = tiny_gpt_neox(V, n_layers=2, hidden=64, heads=4, max_len=64, intermediate=4, seed=0)
    before = head_scores(model, seq_len=16, n_seqs=16)
    r = np.random.default_rng(0).integers(0, V, (16, 24))
    icl_before = icl_score(model, np.concatenate([r, r], 1))
    assert before["induction"].shape == (2, 4)
    assert float(before["induction"].max()) < 0.15  # untrained: ~uniform attention
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(550):
        ids, labels = _repeat_batch(gen, V, 32)
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = head_scores(model, seq_len=16, n_seqs=16)
    ind0, ind1 = float(before["induction"].max()), float(after["induction"].max())
    assert ind1 > 0.4 and ind1 > ind0 + 0.3, (ind0, ind1)
    # the induction head sits in the second block, fed by a previous-token head in the first
    assert int(np.argmax(after["induction"].max("head").values)) == 1
    assert float(after["prev_token"].sel(layer=1).max()) > float(before["prev_token"].sel(layer=1).max()) + 0.2
    # in-context learning: the late token of a repeat is predicted much better than the early one
    icl_after = icl_score(model, np.concatenate([r, r], 1))
    assert icl_after["late"] == 47 and icl_after["early"] == 4
    assert icl_after["icl_score"] < -1.0 < icl_before["icl_score"]
    states = model_states({"untrained": tiny_gpt_neox(V, 2, 64, 4, 64, intermediate=4, seed=0), "trained": model},
                          tokens={"untrained": 1.0, "trained": 550 * 32 * 40.0}, seq_len=16)
    assert states["induction_max"].sel(layer=2, checkpoint="trained") > states["induction_max"].sel(layer=2, checkpoint="untrained") + 0.3
    assert states.sizes["head"] == 4 and np.isnan(states["icl_score"]).all()


def test_head_scores_bad_seq_len():
    model = tiny_gpt_neox(16, n_layers=1, hidden=16, heads=2, max_len=16)
    with pytest.raises(ValidationError, match="does not fit"):
        head_scores(model, seq_len=10)
    with pytest.raises(ValidationError, match="integer array"):
        icl_score(model, np.zeros((2, 10)))
