"""Errors of the disk (full, read-only, forbidden) are one line from any command, not a traceback."""


def test_a_full_disk_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    import errno

    import srlm.commands.grade as grade
    from srlm.cli import main

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out"))

    monkeypatch.setattr(grade, "read_pairs", full)
    assert main(["grade", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("srlm: error: No space left on device:") and len(err.splitlines()) == 1
