"""The paper's ablation tables (TPAMI 2021, tables 5-10) as data: switches, experiment config, numbers.

One data file, ``cmpc/paper_tables.yaml``, holds every printed row: which modules it has (EP, RAR and g,
TGFE and n, ConvLSTM, GloVe, CMF, NW, AAR and its adjacency, levels), the experiment config that runs it
(``configs/experiment/<name>.yaml``) and the paper's numbers in percent per ``"<dataset>/<split>"`` and metric
(metric names of :mod:`cmpc.metrics`). ``tests/test_paper_tables.py`` checks each config against its row;
``scripts/ablate.py`` runs a table and ``scripts/report.py`` prints it beside the paper's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

from cmpc.errors import ConfigError

DATA_FILE = Path(__file__).with_name("paper_tables.yaml")
SWITCHES = ("levels", "ep", "rar", "g", "tgfe", "n", "nw", "convlstm", "glove", "cmf", "aar", "adjacency")


@dataclass(frozen=True)
class PaperRow:
    """One printed row. ``paper``: ``{"unc/val": {"oIoU": 55.38, ...}}`` in percent."""

    table: int
    row: str
    experiment: str
    switches: dict
    paper: dict
    note: str = ""
    same_as: str | None = None  # "<table>/<row>" printing the same number for the same setting

    @property
    def label(self) -> str:
        return f"table {self.table} row {self.row}"


@dataclass(frozen=True)
class PaperTable:
    number: int
    title: str
    datasets: tuple[str, ...]  # dataset configs the paper measured the rows on (configs/dataset/<name>.yaml)
    columns: tuple[str, ...]  # switch columns as printed
    metrics: tuple[str, ...]  # metric columns as printed
    rows: tuple[PaperRow, ...] = field(default_factory=tuple)

    def row(self, name: str) -> PaperRow:
        for r in self.rows:
            if r.row == str(name):
                return r
        raise ConfigError(f"table {self.number} has no row {name!r}; rows: {', '.join(r.row for r in self.rows)}")


@lru_cache(maxsize=1)
def _load() -> dict:
    raw = OmegaConf.to_container(OmegaConf.load(DATA_FILE))
    tables = {}
    for number, t in raw["tables"].items():
        rows = []
        for r in t["rows"]:
            unknown = set(r["switches"]) - set(SWITCHES)
            if unknown:
                raise ConfigError(f"{DATA_FILE}: table {number} row {r['row']}: unknown switches {sorted(unknown)}")
            rows.append(PaperRow(int(number), str(r["row"]), r["experiment"], r["switches"], r["paper"],
                                 r.get("note", ""), r.get("same_as")))
        tables[int(number)] = PaperTable(int(number), t["title"], tuple(t["datasets"]), tuple(t["columns"]),
                                         tuple(t["metrics"]), tuple(rows))
    return {"tables": tables, "presets": raw.get("presets", {})}


def tables() -> dict[int, PaperTable]:
    """Every table of the data file, by number."""
    return _load()["tables"]


def table(number: int | str) -> PaperTable:
    """Table ``number`` (5-10); ConfigError naming the known tables otherwise."""
    known = tables()
    try:
        return known[int(number)]
    except (KeyError, ValueError):
        raise ConfigError(f"unknown table {number!r}: the paper's ablation tables are "
                          f"{', '.join(map(str, known))} ({DATA_FILE.name})") from None


def rows() -> list[PaperRow]:
    """All rows of all tables, in table order."""
    return [r for t in tables().values() for r in t.rows]


def find_row(ref: str) -> PaperRow:
    """The row named ``"<table>/<row>"`` (the ``same_as`` form)."""
    number, _, name = ref.partition("/")
    return table(number).row(name)


def presets() -> dict[str, dict]:
    """Named presets that are not ablation rows (``released_code``), with the numbers they aim at."""
    return _load()["presets"]
