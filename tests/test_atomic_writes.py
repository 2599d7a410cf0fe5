"""Every file ctrain and experiments write goes through ctrain.storage (atomic: temp file, fsync, rename)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent

# A write that bypasses ctrain.storage: open/os.fdopen in a write or append mode, Path.write_text/write_bytes,
# matplotlib's savefig, json.dump into a file, a copied file.
BARE_WRITE = re.compile(r"""\bopen\([^)]*["'][wax]b?\+?["']|\.write_text\(|\.write_bytes\(|\.savefig\(|json\.dump\(|"""
                        r"""shutil\.copy(file)?\(""")

# (file, the line's text) -> why it may write without ctrain.storage.
ALLOWED = {
    ("ctrain/checkpoint.py", 'with open(tmp, "w") as f:'):
        "the lock file is written under a private name and hard-linked into place: an atomic create-if-absent, "
        "which a rename (it replaces) cannot give",
    ("ctrain/checkpoint.py", 'with os.fdopen(fd, "w") as f:'):
        "the lock's fallback on a filesystem without hard links: an O_EXCL create, for the same reason",
    ("ctrain/checkpoint.py", "json.dump(record, f)"): "the two lock writes above",
    ("ctrain/data/fetch.py", 'with os.fdopen(fd, "wb") as out:'):
        "a download streams into a mkstemp .part file in the cache folder, checked, then renamed into place",
    ("ctrain/storage.py", None): "the atomic writer itself",
}


def bare_writes() -> list[tuple[str, int, str]]:
    """Returns (file, line number, line) of every write in ctrain/ and experiments/ that bypasses ctrain.storage."""
    found = []
    for folder in ("ctrain", "experiments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if (name, None) in ALLOWED:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if BARE_WRITE.search(code) and (name, code.strip()) not in ALLOWED:
                    found.append((name, number, line.strip()))
    return found


def test_no_file_is_written_outside_ctrain_storage():
    assert bare_writes() == []


def test_the_check_finds_a_bare_write():
    # The pattern must see each spelling it is meant to catch, or the test above could never fail.
    for line in ('with open(p, "w") as f:', "open(p, 'wb')", 'open(p, mode="a")', "p.write_text(s)",
                 "fig.savefig(path)", "json.dump(obj, f)", "shutil.copyfile(a, b)"):
        assert BARE_WRITE.search(line), line
    for line in ("open(p)", 'open(p, "rb")', "json.dumps(obj)", "save_figure(fig, path)"):
        assert not BARE_WRITE.search(line), line


def test_every_allowed_line_is_still_there():
    # An allow-list entry whose line is gone would excuse a new bare write of the same text elsewhere in that file.
    for name, text in ALLOWED:
        source = (ROOT / name).read_text()
        assert text is None or text in source, (name, text)
