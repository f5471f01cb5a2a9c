"""The demo's report as a reader gets it (issue 17): rendered by headless Chromium, every
section there, every number the Findings quote equal to the one in the store, and no
filesystem path in the title or a heading."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

#: sections every sweep report has (ids), and those shown only when their data exist
ALWAYS = ["findings", "summary", "curves", "heatmaps", "maps", "internal", "config", "provenance"]
IF_DATA = {"normalised": "ceilings", "subjects": "subjects", "downstream": "downstream", "cooccurrence": "cooccurrence"}


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _render(page, profile) -> str:
    """The DOM after Chromium loaded and laid out the page."""
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'; .ci/run installs it when it can): "
                    "the report cannot be rendered")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--dump-dom",
           page.resolve().as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False).stdout
    assert "<body" in out, "Chromium rendered nothing"
    return out


class _Page(HTMLParser):
    """Ids of sections, text of the title and headings, and every span.num with its
    attributes and text, tagged with the section it is in."""

    def __init__(self):
        super().__init__()
        self.sections, self.headings, self.nums, self.details = [], [], [], []
        self._stack, self._section, self._num = [], None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
            self.sections.append(self._section)
        if tag in ("title", "h1", "h2", "h3", "h4", "summary"):
            self._stack.append([tag, ""])
        if tag == "details":
            self.details.append((self._section, "open" in a))
        if tag == "span" and "num" in (a.get("class") or "").split():
            self._num = {"attrs": a, "text": "", "section": self._section}

    def handle_endtag(self, tag):
        if self._stack and tag == self._stack[-1][0]:
            self.headings.append(tuple(self._stack.pop()))
        if tag == "span" and self._num is not None:
            self.nums.append(self._num)
            self._num = None

    def handle_data(self, data):
        if self._stack:
            self._stack[-1][1] += data
        if self._num is not None:
            self._num["text"] += data


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The quick demo: a real sweep with statistics, and its report."""
    from brainalign.cli import main

    root = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAINALIGN_CACHE", str(root / "cache"))
        mp.setenv("BRAINALIGN_DATA", str(root / "data"))
        assert main(["demo", "--quick", "-o", str(root / "out")]) == 0
        from brainalign.sweep.analyze import analyze

        a = analyze(root / "out" / "results.zarr")  # the internal states come from the cache the report filled
    return root, root / "out" / "report.html", a


# -- the value each quoted number names ------------------------------------------------------
def _expected(a: dict, key: str, at: dict) -> float:
    c, res = a["curves"], a["results"]
    roi, ck = at.get("roi"), at.get("checkpoint")
    if key == "n_rois":
        return c.sizes["roi"]
    if key == "n_above_chance":
        return int(c["significant"].sum())
    if key in ("peak_r", "peak_lo", "peak_hi", "best_layer", "best_depth"):
        # the quoted checkpoint is the ROI's peak
        assert ck == str(c["score_mean"].sel(roi=roi).idxmax("checkpoint").values), (key, roi, ck)
        var = {"peak_r": "score_mean", "peak_lo": "score_lo", "peak_hi": "score_hi"}.get(key, key)
        return float(c[var].sel(roi=roi, checkpoint=ck))
    if key == "tokens":
        return float(res["tokens"].sel(checkpoint=ck))
    if key == "n_layers":
        return int(res.attrs["n_layers"])
    if key == "adjusted_p":
        return float(c["adjusted_p"].sel(roi=roi))
    if key.startswith("transition_"):
        tr = a["phases"][roi].transitions[int(at["transition"]) - 1]
        return {"transition_at": tr.at, "transition_lo": tr.interval[0], "transition_hi": tr.interval[1],
                "transition_p": tr.p}[key]
    if key in ("n_significant_targets", "n_tested_targets"):
        from brainalign.sweep.analyze import _done, group_significance

        g = group_significance(_done(res), ck, int(at["layer"]))
        return g.attrs["n_significant"] if key == "n_significant_targets" else int(np.isfinite(g["pvalue"].values).sum())
    if key == "n_rois_without_transition":
        return sum(1 for p in a["phases"].values() if p.significant is not False and not p.transitions)
    if key in ("state_distance_log10", "downstream_distance_log10", "cooccurrence_tokens"):
        row = a["cooccurrence"].iloc[int(at["row"])]
        assert row["roi"] == roi
        return float(row["tokens" if key == "cooccurrence_tokens" else key])
    t = a["training"]
    if key in ("corpus_documents", "corpus_words"):
        return t[key.split("_")[1]]
    if key == "n_stories":
        return len(t["stories"])
    if key == "n_overlap_stories":
        return len(t["stories_in_corpus"])
    if key == "max_overlap":
        return max(t["overlap"].values())
    raise AssertionError(f"the test does not know the quoted number {key!r}: add it here")


_SUFFIX = {"k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def _printed(text: str) -> tuple[float, float]:
    """(value, half a unit of its last printed digit) of a quoted number like ``0.171``,
    ``6.7e-07``, ``2.05 B`` or ``20484``."""
    s = text.strip().replace("\u2212", "-")
    if s.endswith("%"):  # a fraction printed as a percentage
        v, half = _printed(s[:-1])
        return v / 100, half / 100
    m = re.fullmatch(r"(-?\d+(?:\.(\d+))?)(?:e([-+]?\d+))?(?: ([kMBT]))?", s)
    assert m, f"not a number: {text!r}"
    decimals = len(m.group(2) or "")
    exp = int(m.group(3) or 0)
    scale = _SUFFIX.get(m.group(4) or "", 1.0)
    value = float(m.group(1)) * 10.0 ** exp * scale
    return value, 0.5 * 10.0 ** (exp - decimals) * scale


def test_demo_report_renders_with_every_section_true_numbers_and_no_paths(demo):
    root, page, a = demo
    dom = _render(page, root / "chromium-profile")
    p = _Page()
    p.feed(dom)

    # every section, by id; the conditional ones exactly when they have data
    missing = [s for s in ALWAYS if s not in p.sections]
    assert not missing, f"sections missing: {missing} (have {p.sections})"
    have = {"ceilings": "ceiling" in a["results"] and np.isfinite(a["results"]["ceiling"].values).any(),
            "subjects": a["results"].sizes["subject"] > 1,
            "downstream": a.get("downstream") is not None,
            "cooccurrence": a.get("cooccurrence") is not None and len(a["cooccurrence"]) > 0}
    for sid, need in IF_DATA.items():
        assert (sid in p.sections) == bool(have[need]), (sid, have[need])

    # every number the Findings quote is the stored one, to its printed precision
    quoted = [n for n in p.nums if n["section"] == "findings"]
    assert len(quoted) >= 8, quoted
    keys = {n["attrs"]["data-key"] for n in quoted}
    assert {"peak_r", "peak_lo", "peak_hi", "best_layer", "best_depth", "n_above_chance", "adjusted_p"} <= keys
    for n in quoted:
        attrs = {k[5:].replace("-", "_"): v for k, v in n["attrs"].items() if k.startswith("data-")}
        want = float(_expected(a, attrs["key"], attrs))
        got, half = _printed(n["text"])
        assert math.isfinite(want) and abs(got - want) <= half * 1.0001 + 1e-12, (attrs, n["text"], want)

    # no filesystem path in the title or any heading
    store = str(root)
    for tag, text in p.headings:
        assert store not in text and "/tmp/" not in text, (tag, text)
        assert not re.search(r"(^|[\s(])(~?/)[\w.-]+/", text), (tag, text)
    assert any(tag == "title" for tag, _ in p.headings) and any(tag == "h1" for tag, _ in p.headings)

    # configuration and provenance start collapsed
    assert ("config", False) in p.details and ("provenance", False) in p.details
