"""``saig photos``: the list of photos ``locate`` will process, as the plugin asks for it (one contract)."""
from __future__ import annotations

import json
import subprocess
import sys

from tiling.photos import collect_photos


def saig_json(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "saig_cli", "--progress", "json", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if '"result"' in line][-1]


def test_photos_lists_what_locate_takes_recursively_and_names_every_skipped_file_with_its_reason(tmp_path):
    (tmp_path / "trip" / "day2").mkdir(parents=True)
    for name in ("trip/a.jpg", "trip/day2/b.HEIC", "trip/day2/c.webp", "trip/notes.txt", "single.png"):
        (tmp_path / name).write_bytes(b"")  # names only: listing reads no pixels
    answer = saig_json("photos", str(tmp_path / "trip"), str(tmp_path / "single.png"), "--json")
    expected = [str(p) for p in collect_photos([tmp_path / "trip", tmp_path / "single.png"])]
    assert answer["photos"] == expected  # exactly the library's expansion, in its order
    assert str(tmp_path / "trip" / "day2" / "b.HEIC") in answer["photos"]  # HEIC/WebP: never refused by a copy
    assert str(tmp_path / "trip" / "day2" / "c.webp") in answer["photos"]
    assert answer["photos"][-1] == str(tmp_path / "single.png")
    assert answer["skipped"] == [{"path": str(tmp_path / "trip" / "notes.txt"),
                                  "reason": answer["skipped"][0]["reason"]}]
    assert "not a photo type" in answer["skipped"][0]["reason"]


def test_locate_candidates_carry_their_grid_crs_next_to_x_and_y():
    from tiling.schema import CANDIDATE_RESULT_FIELDS

    fields = list(CANDIDATE_RESULT_FIELDS)
    assert "grid_crs" in fields and fields.index("grid_crs") == fields.index("y") + 1
