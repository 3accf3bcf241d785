"""io.swap_dir_into_place: the one atomic directory swap (checkpoints, data dirs, exports)."""
import os

from scalelab.io import swap_dir_into_place


def _tmp_with(root, name, text):
    d = root / name
    d.mkdir()
    (d / "f.txt").write_text(text)
    return d


def test_new_replaced_dir_file_and_symlink(tmp_path):
    out = tmp_path / "out"
    swap_dir_into_place(_tmp_with(tmp_path, ".new1", "1"), out)  # nothing there yet
    assert (out / "f.txt").read_text() == "1"
    swap_dir_into_place(_tmp_with(tmp_path, ".new2", "2"), out)  # a directory: replaced, old one gone
    assert (out / "f.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    target = _tmp_with(tmp_path, "elsewhere", "keep")
    link = tmp_path / "link"
    os.symlink(target, link)
    swap_dir_into_place(_tmp_with(tmp_path, ".new3", "3"), link)  # a symlink: replaced, its target kept
    assert not link.is_symlink() and (link / "f.txt").read_text() == "3"
    assert (target / "f.txt").read_text() == "keep"
    plain = tmp_path / "plain"
    plain.write_text("file")
    swap_dir_into_place(_tmp_with(tmp_path, ".new4", "4"), plain)  # a file
    assert (plain / "f.txt").read_text() == "4"


def test_the_old_one_goes_through_the_given_trash_name(tmp_path, monkeypatch):
    out = _tmp_with(tmp_path, "out", "old")
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append((os.path.basename(a), os.path.basename(b))),
                                                     real(a, b)))
    swap_dir_into_place(_tmp_with(tmp_path, ".new", "new"), out, trash=tmp_path / ".tmp-old-out")
    assert seen == [("out", ".tmp-old-out"), (".new", "out")]  # old aside first, then the new one in
    assert (out / "f.txt").read_text() == "new" and not (tmp_path / ".tmp-old-out").exists()
