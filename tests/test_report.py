import shutil
import subprocess

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from brainalign.report import MISSING, Section, fmt_number, fmt_p, fmt_tokens, format_frame, num, write_report


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path, png_path, size=(1100, 1400)):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); .ci/run installs it when it can")
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={png_path.parent / 'chromium-profile'}", f"--screenshot={png_path}",
        f"--window-size={size[0]},{size[1]}", html_path.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png_path.is_file(), "Chromium wrote no screenshot"
    return np.asarray(Image.open(png_path).convert("RGB")).astype(int)


def test_report_is_self_contained_and_shows_its_figure(tmp_path):
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.add_patch(plt.Rectangle((0, 0), 1, 1, color=(0.0, 0.8, 0.2)))  # a planted green block
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    table = pd.DataFrame({"roi": ["<b>STG</b>", "IFG"], "score": [0.31234, 0.1]})
    out = write_report(tmp_path / "report.html", "A run", [Section("Results", text=["Planted block."], tables=[table], figures=[(fig, "green")])])
    html = out.read_text()
    assert "data:image/png;base64," in html
    assert "src='http" not in html and 'src="http' not in html  # nothing fetched from outside
    assert "&lt;b&gt;STG&lt;/b&gt;" in html and "0.312<" in html and "0.3123" not in html  # escaped, 3 digits
    shot = screenshot(out, tmp_path / "shot.png")
    green = (np.abs(shot[..., 0] - 0) < 30) & (np.abs(shot[..., 1] - 204) < 30) & (np.abs(shot[..., 2] - 51) < 30)
    assert green.sum() > 5000, "the embedded figure is not visible in the rendered page"


# -- formatting rules (issue 17) ------------------------------------------------------------
def test_tokens_are_written_with_a_unit_and_three_digits():
    assert fmt_tokens(2_050_000_000) == "2.05 B"
    assert fmt_tokens(310_000) == "310 k"
    assert fmt_tokens(12_345_678) == "12.3 M"
    assert fmt_tokens(3.072e5) == "307 k"
    assert fmt_tokens(512) == "512" and fmt_tokens(0) == "0"
    assert fmt_tokens(float("nan")) == MISSING and fmt_tokens(None) == MISSING


def test_numbers_have_three_significant_digits_and_no_nan():
    assert fmt_number(0.123456) == "0.123"
    assert fmt_number(3.072e-05) == "3.07e-05"
    assert fmt_number(12345.6) == "12300"
    assert fmt_number(2.0) == "2" and fmt_number(7) == "7"
    assert fmt_number(float("nan")) == MISSING and fmt_number(None) == MISSING and fmt_number(float("inf")) == MISSING
    assert fmt_p(0.012345) == "0.012" and fmt_p(float("nan")) == MISSING


def test_tables_are_formatted_cell_by_cell():
    df = pd.DataFrame({"ROI": ["STG", "IFG"], "tokens": [3.072e5, np.nan], "r": [0.31234, np.nan],
                       "p (two-sided bootstrap)": [0.00123, 0.5], "layer": [3, 4], "note": [None, "x"]})
    f = format_frame(df)
    assert f["tokens"].tolist() == ["307 k", MISSING]
    assert f["r"].tolist() == ["0.312", MISSING]
    assert f["p (two-sided bootstrap)"].tolist() == ["0.0012", "0.5"]
    assert f["layer"].tolist() == ["3", "4"] and f["note"].tolist() == [MISSING, "x"]


def test_no_nan_and_no_raw_floats_in_a_written_table(tmp_path):
    df = pd.DataFrame({"ROI": ["a", "b"], "start (tokens)": [3.072e5, 2.05e9], "change": [np.nan, 1 / 3]})
    html = write_report(tmp_path / "r.html", "T", [Section("S", tables=[df])]).read_text()
    assert "NaN" not in html and "nan<" not in html and "3.072e+05" not in html
    assert "307 k" in html and "2.05 B" in html and "0.333" in html and f">{MISSING}<" in html


def test_quoted_numbers_name_what_they_are():
    s = num(0.123456, "peak_r", roi="L_STG", checkpoint="step-1000")
    assert s == ('<span class="num" data-key="peak_r" data-fmt="number" data-roi="L_STG" '
                 'data-checkpoint="step-1000">0.123</span>')
    assert ">2.05 B<" in num(2.05e9, "tokens", fmt="tokens")


def test_sections_have_ids_lists_keep_lines_and_collapsed_sections_are_closed_details(tmp_path):
    secs = [Section("Phase transitions", lists=[["L_STG: 2 segment(s)", "  transition 1 at tokens = 1e6", "Tests: x."]]),
            Section("Configuration", code="a: 1", collapsed=True, id="config")]
    html = write_report(tmp_path / "r.html", "T", secs).read_text()
    assert "<section id='phase-transitions'>" in html and "<section id='config'>" in html
    assert html.count("<li class=") == 3 and "<li class='sub'>transition 1 at tokens = 1e6</li>" in html
    body = html.split("<section id='config'>")[1]
    assert "<details><summary>" in body and "<details open" not in html
    # print: details opened and figures not split across pages
    assert "@media print" in html and "break-inside:avoid" in html and "beforeprint" in html


def test_provenance_rows_are_in_training_order():
    import xarray as xr

    from brainalign.sweep._report import _provenance_frame

    names = ["checkpoint-0", "checkpoint-1", "checkpoint-12", "checkpoint-150", "checkpoint-2"]
    steps = [0, 1, 12, 150, 2]
    res = xr.Dataset(coords={"checkpoint": names, "step": ("checkpoint", steps),
                             "tokens": ("checkpoint", [s * 128.0 for s in steps])})
    res.attrs["tasks"] = {n: {"seconds": 1.0, "host": "h"} for n in sorted(names)}  # text order
    t = _provenance_frame(res)
    assert t["checkpoint"].tolist() == ["checkpoint-0", "checkpoint-1", "checkpoint-2", "checkpoint-12", "checkpoint-150"]


def test_titles_never_show_a_filesystem_path(tmp_path):
    import xarray as xr

    from brainalign.sweep._report import _display_name, _title

    assert _display_name(str(tmp_path / "runs" / "tiny-gpt-neox")) == "tiny-gpt-neox"
    assert _display_name("EleutherAI/pythia-160m") == "EleutherAI/pythia-160m"
    res = xr.Dataset(attrs={"model": str(tmp_path / "m" / "tiny"), "dataset": "lebel2023"})
    assert str(tmp_path) not in _title(res) and "tiny" in _title(res) and "lebel2023" in _title(res)


def test_config_is_yaml():
    from brainalign.report import yaml_block

    text = yaml_block({"model": {"name": "m", "layers": [1, 2]}, "stats": {"test": "sign"}})
    assert text.startswith("model:\n  name: m") and "{" not in text


def test_the_corpus_overlap_sentence_claims_only_what_was_checked():
    from brainalign.sweep._report import _overlap_sentence

    base = {"documents": 10, "words": 10390, "stories": ["a", "b", "c"], "stories_in_corpus": []}
    names_only = _overlap_sentence({**base, "overlap": None, "checked": "names only"})
    assert "could not be compared" in names_only and "holds none" not in names_only
    none = _overlap_sentence({**base, "overlap": {"a": 0.0, "b": 0.01, "c": 0.0}, "checked": "text and names"})
    assert "holds none" in none and "1%" in none
    partial = _overlap_sentence({**base, "overlap": {"a": 0.3, "b": 0.0, "c": 0.0}, "checked": "text and names"})
    assert "partly overlapping" in partial and "30%" in partial and "holds none" not in partial
    inside = _overlap_sentence({**base, "stories_in_corpus": ["b"], "overlap": {"b": 0.9}})
    assert inside.startswith("Caution") and "b" in inside


def _step_curve(name, mid, amp, rng, n=24):
    """A logistic step at 10^mid training tokens (plus noise), as an xarray curve."""
    import xarray as xr

    u = np.linspace(3, 7, n)
    y = amp / (1 + np.exp(-(u - mid) / 0.08)) + rng.normal(0, 0.01 * max(abs(amp), 1e-3), n)
    return xr.DataArray(y, dims="checkpoint", coords={"checkpoint": [f"c{i}" for i in range(n)], "tokens": ("checkpoint", 10 ** u)},
                        name=name)


def test_state_transitions_are_one_table_in_training_order():
    """The internal-states section: the transitions of every curve in one table sorted by
    training tokens (so transitions that line up sit together), each curve's pattern, and
    the test scheme once (not once per curve)."""
    from brainalign.dynamics.phases import detect_phases
    from brainalign.sweep._report import _phase_parts

    rng = np.random.default_rng(0)
    curves = {"local learning coefficient": _step_curve("llc", 5.5, 3.0, rng),
              "held-out accuracy": _step_curve("acc", 5.55, 0.8, rng),
              "training accuracy": _step_curve("train", 4.0, 0.9, rng),
              "weight norm": _step_curve("norm", 5.0, 0.0, rng)}
    phases = {k: detect_phases(c, x="tokens", name=k, n_boot=50) for k, c in curves.items()}
    sec = Section("Internal states")
    _phase_parts(sec, phases)
    (t,) = sec.tables
    # the training accuracy's step first, then the LLC's and the held-out accuracy's side by side
    assert t["curve"].tolist() == ["training accuracy", "local learning coefficient", "held-out accuracy"], t
    np.testing.assert_allclose(np.log10(t["at (tokens)"].astype(float)), [4.0, 5.5, 5.55], atol=0.05)
    assert (t["p"] < 0.05).all() and t["phases"].str.contains("\u2192").all()
    (lines,) = sec.lists
    assert lines[-1] == "weight norm: flat (no transition passes its test)"
    assert lines[0].startswith("local learning coefficient: flat\u2192rise")
    assert len(sec.text) == 1 and sec.text[0].count("Tests:") == 1


def test_cooccurrence_section_says_why_it_is_empty():
    import xarray as xr

    from brainalign.dynamics.phases import detect_phases
    from brainalign.sweep._report import _cooccurrence_section

    rng = np.random.default_rng(1)
    states = {"local learning coefficient": detect_phases(_step_curve("llc", 5.5, 3.0, rng), x="tokens", n_boot=0)}
    flat = {"weight norm": detect_phases(_step_curve("norm", 5.0, 0.0, rng), x="tokens", n_boot=0)}
    empty = pd.DataFrame(columns=["roi", "transition", "tokens"])

    def ctx(significant, state_phases):
        curves = xr.Dataset({"significant": ("roi", np.array(significant))}, coords={"roi": ["L_STG", "L_AG"]})
        return type("Ctx", (), {"a": {"cooccurrence": empty, "state_phases": state_phases}, "curves": curves})()

    sec = _cooccurrence_section(ctx([False, False], states))
    assert sec is not None and "no ROI's alignment is above chance" in sec.text[0] and not sec.tables
    assert "no brain-alignment transition passes its test" in _cooccurrence_section(ctx([True, False], states)).text[0]
    assert _cooccurrence_section(ctx([False, False], flat)) is None  # nothing on either side: no section
