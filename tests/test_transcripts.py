import os

import pytest

from brainalign import DataNotFoundError, NotDownloadedError, ValidationError
from brainalign.errors import check_data_file, is_annex_pointer
from brainalign.transcripts import is_non_word, read_textgrid, story_from_textgrid

# A TextGrid in Praat's long text format, shaped like ds003020's (phone tier first,
# word tier second, non-words and empty intervals between words).
LONG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 6.2345678901
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "phone"
        xmin = 0
        xmax = 6.2345678901
        intervals: size = 6
        intervals [1]:
            xmin = 0
            xmax = 0.51
            text = "sp"
        intervals [2]:
            xmin = 0.51
            xmax = 0.62
            text = "AY1"
        intervals [3]:
            xmin = 0.62
            xmax = 1.0123456789
            text = "S"
        intervals [4]:
            xmin = 1.0123456789
            xmax = 1.3
            text = "AO1"
        intervals [5]:
            xmin = 1.3
            xmax = 2.2
            text = ""
        intervals [6]:
            xmin = 2.2
            xmax = 6.2345678901
            text = "AH0"
    item [2]:
        class = "IntervalTier"
        name = "word"
        xmin = 0
        xmax = 6.2345678901
        intervals: size = 7
        intervals [1]:
            xmin = 0
            xmax = 0.51
            text = "sentence_start"
        intervals [2]:
            xmin = 0.51
            xmax = 0.62
            text = "i"
        intervals [3]:
            xmin = 0.62
            xmax = 1.3
            text = "saw"
        intervals [4]:
            xmin = 1.3
            xmax = 1.9
            text = "{BR}"
        intervals [5]:
            xmin = 1.9
            xmax = 2.2
            text = "sp"
        intervals [6]:
            xmin = 2.2
            xmax = 6.2345678901
            text = "it's"
        intervals [7]:
            xmin = 6.2345678901
            xmax = 6.2345678901
            text = " "
'''


def test_read_long_textgrid_keeps_times_exactly(tmp_path):
    p = tmp_path / "story.TextGrid"
    p.write_text(LONG)
    words, phones = read_textgrid(p)
    assert words.labels == ("i", "saw", "it's")
    assert words.starts.tolist() == [0.51, 0.62, 2.2]
    assert words.ends.tolist() == [0.62, 1.3, 6.2345678901]
    assert phones.labels == ("AY1", "S", "AO1", "AH0")
    assert phones.ends[1] == 1.0123456789


def test_read_short_textgrid_written_by_praatio(tmp_path):
    from praatio import textgrid as tgio
    from praatio.data_classes.interval_tier import IntervalTier

    tg = tgio.Textgrid()
    tg.addTier(IntervalTier("phones", [(0.1, 0.2, "DH"), (0.2, 0.3, "AH0"), (0.3, 0.5, "sil")], 0, 2))
    tg.addTier(IntervalTier("words", [(0.1, 0.3, "the"), (0.3, 0.5, "{LG}"), (0.5, 1.7333333, "end")], 0, 2))
    p = tmp_path / "short.TextGrid"
    tg.save(str(p), format="short_textgrid", includeBlankSpaces=True)
    assert "ooTextFile short" in p.read_text() or "intervals: size" not in p.read_text()
    s = story_from_textgrid(p, tr=2.0, tr_times=[1.0, 3.0])
    assert s.name == "short" and s.words == ("the", "end")
    assert s.offsets[-1] == 1.7333333
    assert s.phones[0] == ("DH", "AH0")


def test_textgrid_errors(tmp_path):
    p = tmp_path / "nowords.TextGrid"
    only_phones = LONG.replace("size = 2", "size = 1").split("    item [2]:")[0]
    p.write_text(only_phones)
    with pytest.raises(ValidationError, match=r"nowords.TextGrid: no word tier found"):
        read_textgrid(p)
    bad = tmp_path / "garbage.TextGrid"
    bad.write_text("this is not a textgrid at all\n" * 40)
    with pytest.raises(ValidationError, match=r"garbage.TextGrid: cannot be parsed"):
        read_textgrid(bad)
    with pytest.raises(DataNotFoundError, match=r"missing.TextGrid does not exist"):
        read_textgrid(tmp_path / "missing.TextGrid")
    ok = tmp_path / "ok.TextGrid"
    ok.write_text(LONG)
    with pytest.raises(ValidationError, match="no tier named 'words'"):
        read_textgrid(ok, word_tier="words")
    words, _ = read_textgrid(ok, word_tier=0, phone_tier=1)  # explicit choice wins
    assert words.labels == ("AY1", "S", "AO1", "AH0")


@pytest.mark.parametrize("label,non", [("sp", True), ("{NS}", True), ("SENTENCE_END", True), ("", True),
                                       ("  ", True), ("{br}", True), ("lg", True), ("brave", False), ("i", False)])
def test_non_words(label, non):
    assert is_non_word(label) is non


def test_annex_pointers(tmp_path):
    data = tmp_path / "UTS01"
    data.mkdir()
    # a pointer file (annex on a filesystem without symlinks)
    ptr = data / "a.hf5"
    ptr.write_text("/annex/objects/SHA256E-s1234--abcdef.hf5\n")
    # a dangling symlink into the annex (datalad install without datalad get)
    link = data / "b.hf5"
    os.symlink("../../.git/annex/objects/Xx/Yy/SHA256E-s1--ab.hf5/SHA256E-s1--ab.hf5", link)
    # a symlink to a pointer-looking text file
    alt = data / "c.hf5"
    alt.write_text(".git/annex/objects/Xx/Yy/SHA256E-s1--cd.hf5\n")
    real = data / "d.hf5"
    real.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(2000))
    assert is_annex_pointer(ptr) and is_annex_pointer(link) and is_annex_pointer(alt)
    assert not is_annex_pointer(real)
    for p in (ptr, link, alt):
        with pytest.raises(NotDownloadedError, match=rf"{p.name} is a git-annex pointer.*not downloaded.*datalad get"):
            check_data_file(p, what="response file", hint="Run: datalad get UTS01")
    assert check_data_file(real) == real
    with pytest.raises(NotDownloadedError, match="TextGrid .*git-annex pointer"):
        read_textgrid(ptr)
