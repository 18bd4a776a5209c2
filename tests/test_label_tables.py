"""The one reader of label tables: every malformed cell or row is a counted skip or an error
naming the file, line and column; a BOM, -1.00 and long-but-legal fields read as they should."""
from __future__ import annotations

import pytest

from cmgl_dist.shards.pack import main as pack_main
from cmgl_dist.shards.sources import Exclusions, SourceError, SourceInput, generic_csv

HEADER = "path,atelectasis,cardiomegaly,edema,pleural_effusion,consolidation,text\n"


def _records(tmp_path, body: bytes, uncertain="zeros"):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    table = tmp_path / "labels.csv"
    table.write_bytes(body)
    excluded = Exclusions()
    records = list(generic_csv.records(SourceInput(images=tmp_path, labels=table, reports=None, uncertain=uncertain),
                                       excluded))
    return records, excluded, table


def test_a_utf8_bom_does_not_hide_the_first_column(tmp_path):
    records, _, _ = _records(tmp_path, b"\xef\xbb\xbf" + (HEADER + "a.png,1,0,0,0,0,x\n").encode())
    assert [r.image_ref for r in records] == ["a.png"]


def test_minus_one_in_any_spelling_is_recorded_as_uncertain(tmp_path):
    records, _, _ = _records(tmp_path, (HEADER + "a.png,-1.00,1.0,0,,-1,x\n").encode(), uncertain="ones")
    assert records[0].uncertain == ("atelectasis", "consolidation")
    assert records[0].labels["atelectasis"] == 1 and records[0].labels["cardiomegaly"] == 1


def test_a_short_row_is_a_counted_skip_and_the_rest_are_read(tmp_path):
    records, excluded, _ = _records(tmp_path, (HEADER + "a.png,1,0,0,0,0,x\nb.png,1,0\nc.png,0,0,0,0,0,y\n").encode())
    assert [r.image_ref for r in records] == ["a.png", "c.png"]
    assert excluded.counts["malformed table row"] == 1


@pytest.mark.parametrize("body,where", [
    ((HEADER + "a.png,1,0,0,0,0,x\nb.png,1,0,maybe,0,0,y\n").encode(), "line 3, column 'edema'"),
    ((HEADER + 'a.png,1,0,0,0,0,"multi\nline"\nb.png,1,0,0,0,inf,y\n').encode(), "line 4, column 'consolidation'"),
    ((HEADER + "a.png,1,0,0,0,0,x\nb.png,1,0,0,0,0,caf\xe9\n").encode("latin-1"), "line 3: not UTF-8"),
    ((HEADER + "a.png,1,0,0,0,0," + "x" * 200_000 + "\n").encode(), "line 2: field larger than field limit"),
])
def test_malformed_cells_are_errors_naming_file_line_and_column(tmp_path, body, where):
    with pytest.raises(SourceError) as refused:
        _records(tmp_path, body)
    assert f"{tmp_path / 'labels.csv'} {where}" in str(refused.value)


def test_a_bad_table_ends_the_pack_with_its_message_not_a_traceback(tmp_path, caplog):
    _, _, table = _records(tmp_path, HEADER.encode())
    table.write_bytes((HEADER + "a.png,1,0,0,0,x1,t\n").encode())
    argv = ["--source", "csv", "--labels", str(table), "--images", str(tmp_path), "--out", str(tmp_path / "out")]
    assert pack_main(argv) == 1
    assert "line 2, column 'consolidation': label value 'x1'" in caplog.text

