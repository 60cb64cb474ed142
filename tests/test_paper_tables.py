"""Paper fidelity: every experiment config runs the row of tables 5-10 it claims (cmpc/paper_tables.yaml).

For each row and each dataset the paper measured it on, the composed config is built at tiny widths and trained
one step: exactly the row's modules exist and every trainable parameter receives a gradient, and the config's
GloVe / CMF / NW / g / n are the row's. Plus one test per fault of issue 16 (EP without RAR, GloVe in tables 8
and 10, g on G-Ref, random parts on real datasets) and the released-code preset.
"""

from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR
from hydra import compose, initialize_config_dir

from cmpc import paper_tables
from cmpc.engine.builders import check_pretrained
from cmpc.errors import ConfigError
from cmpc.models import build_model
from cmpc.models.convlstm import ConvLSTM
from cmpc.models.loss import referring_loss

# tiny widths, small random backbone: structure and gradient flow only (random weights asked for explicitly)
TINY = [
    "backbone=small", "backbone.weights=random", "backbone.widths=[4,8,8,8]", "model.visual_dim=8", "model.word_dim=8",
    "model.embed_dim=4", "model.dim=8", "model.out_dim=8", "model.word_classifier_dim=4", "model.convlstm_hidden=8",
    "model.fusion_heads=2", "dataset.num_frames=3",
]
VOCAB = 12
WORDS = torch.tensor([[0, 0, 3, 4, 5], [0, 6, 7, 8, 9]])
EXPERIMENTS = sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra():
    """``compose(*overrides)``; one intra-op thread: these tensors are tiny and threads only cost here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield lambda *overrides: compose("train", overrides=list(overrides))
    torch.set_num_threads(threads)


def one_step(cfg, seed=0):
    """The model of ``cfg`` after one backward pass of the training loss on a tiny random batch."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.backbone, VOCAB).train()
    k = cfg.dataset.num_frames
    images = torch.randn(2, k, 3, 32, 32) if cfg.model.name == "cmpc_v" else torch.randn(2, 3, 32, 32)
    target = torch.zeros(2, 32, 32)
    target[0, 4:20, 8:24] = 1
    target[1, 16:30, 2:12] = 1
    out = model(images, WORDS)
    referring_loss(out, target, reduction="sum")[0].backward()
    return model, out


def has_gradient(module):
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())


CASES = [(r, d) for r in paper_tables.rows() for d in paper_tables.table(r.table).datasets]


@pytest.mark.parametrize("row,dataset", CASES, ids=[f"{r.experiment}-{d}" for r, d in CASES])
def test_experiment_config_runs_exactly_its_rows_modules(hydra, row, dataset):
    s = row.switches
    cfg = hydra(f"dataset={dataset}", f"experiment={row.experiment}", *TINY)
    m = cfg.model
    assert list(m.levels) == s["levels"]
    assert (m.glove, m.cmf) == (s["glove"], s["cmf"]), row.label
    assert m.entity_perception == s["ep"] and m.relation_aware_reasoning == s["rar"] and m.tgfe == s["tgfe"]
    if s["rar"]:
        assert m.gcn_layers == s["g"], f"{row.label} on {dataset}: g"
    if s["tgfe"]:
        assert (m.tgfe_rounds, m.necessary_words) == (s["n"], s["nw"]), row.label

    model, out = one_step(cfg)
    assert torch.isfinite(out["logits"]).all()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not dead, f"{row.label}: parameters without a gradient: {dead[:5]}"

    assert len(model.levels) == len(s["levels"])
    for level in model.levels:
        assert (level.perception is not None) == s["ep"], row.label
        assert (level.reasoning is not None) == (s["rar"] and s.get("g", 0) > 0), row.label
        if level.reasoning is not None:
            assert len(level.reasoning.gcn) == s["g"]
        assert level.cmf == (s["cmf"] and s["ep"])
        assert (getattr(level, "action", None) is not None) == s.get("aar", False), row.label
        for part in (level.perception, level.reasoning, getattr(level, "action", None)):
            assert part is None or has_gradient(part), f"{row.label}: {type(part).__name__} gets no gradient"
    if s.get("aar"):
        assert m.aar_adjacency == s["adjacency"]
    multi = len(s["levels"]) > 1
    assert (model.exchange is not None) == (s["tgfe"] and multi), row.label
    if model.exchange is not None:
        assert len(model.exchange.rounds) == s["n"] and has_gradient(model.exchange)
    assert isinstance(model.fusion, ConvLSTM) == s["convlstm"], row.label
    words_typed = s["ep"] or s["rar"] or s.get("aar", False) or (s["tgfe"] and s.get("nw", False))
    assert (model.classifier is not None) == words_typed, row.label


def test_every_experiment_file_is_a_row_or_a_preset_of_the_data_file():
    claimed = [r.experiment for r in paper_tables.rows()] + [p["experiment"] for p in paper_tables.presets().values()]
    assert sorted(claimed) == EXPERIMENTS  # each file once, no row without a file
    for r in paper_tables.rows():
        table = paper_tables.table(r.table)
        for where, numbers in r.paper.items():
            assert where.split("/")[0] in table.datasets, r.label
            assert set(numbers) <= set(table.metrics) and all(0 <= v <= 100 for v in numbers.values()), r.label
    with pytest.raises(ConfigError, match="tables are 5, 6, 7, 8, 9, 10"):
        paper_tables.table(11)


SAME = [r for r in paper_tables.rows() if r.same_as]


def effective(switches):
    """Switches up to naming: RAR with g = 0 graph layers is no RAR."""
    s = dict(switches)
    if not s["rar"] or s.get("g") == 0:
        s["rar"] = False
        s.pop("g", None)
    return s


@pytest.mark.parametrize("row", SAME, ids=[r.experiment for r in SAME])
def test_rows_printing_the_same_number_build_the_same_model(hydra, row):
    """Faults 1 and 2: table 10 g = 0 is table 5 row 2 (49.06), g = 1 is row 4 (55.38), table 8 n = 1 is row 11
    (60.72, no GloVe), table 9's full model is row 15, table 7 DR is table 6 row 5: the same switches, the same
    parameters and, from the same seed, the same output."""
    other = paper_tables.find_row(row.same_as)
    shared = set(row.paper) & set(other.paper)
    assert shared and all(row.paper[k][m] == other.paper[k][m]
                          for k in shared for m in set(row.paper[k]) & set(other.paper[k]))
    assert effective(row.switches) == effective(other.switches)
    dataset = paper_tables.table(row.table).datasets[0]
    a, b = (hydra(f"dataset={dataset}", f"experiment={r.experiment}", *TINY) for r in (row, other))
    assert a.model.glove == b.model.glove and a.model.cmf == b.model.cmf
    (ma, oa), (mb, ob) = one_step(a), one_step(b)
    assert {n: p.shape for n, p in ma.state_dict().items()} == {n: p.shape for n, p in mb.state_dict().items()}
    assert torch.equal(oa["logits"], ob["logits"])


def test_fault1_entity_perception_without_rar_reaches_the_output(hydra):
    """Table 5 rows 2 and 9 (EP on, RAR off, CMF off): M joins the output as M- (it was built and dropped)."""
    for name in ("table5_row2", "table5_row9"):
        cfg = hydra("dataset=unc", f"experiment={name}", *TINY)
        model, out = one_step(cfg)
        for level in model.levels:
            assert level.reasoning is None and level.carries_reasoned
            assert level.output.in_channels == cfg.model.visual_dim + cfg.model.dim + cfg.model.word_dim
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in level.perception.parameters()), name
        torch.manual_seed(1)
        images = torch.randn(2, 3, 32, 32)
        before = model.eval()(images, WORDS)["logits"]
        with torch.no_grad():
            model.levels[-1].perception.word_proj.weight.mul_(-1.0)
        assert not torch.allclose(before, model(images, WORDS)["logits"]), f"{name}: EP does not reach the logits"


def test_fault2_tables_8_and_10_run_without_glove(hydra):
    for name in ("table8_n0", "table8_n1", "table8_n2", "table8_n3", "table10_g0", "table10_g1", "table10_g2",
                 "table10_g3"):
        cfg = hydra("dataset=unc", f"experiment={name}")
        assert cfg.model.glove is False and cfg.model.cmf is False, name
    assert hydra("dataset=unc", "experiment=table5_row12").model.glove is True  # 61.19: the GloVe row


def test_fault3_gref_uses_two_graph_layers_unless_a_row_says_otherwise(hydra):
    assert hydra("dataset=unc").model.gcn_layers == 1
    assert hydra("dataset=gref").model.gcn_layers == 2
    assert hydra("dataset=gref_umd").model.gcn_layers == 2
    assert hydra("dataset=gref", "experiment=table5_row15").model.gcn_layers == 2
    assert hydra("dataset=gref", "experiment=table10_g1").model.gcn_layers == 1
    assert hydra("dataset=gref", "experiment=released_code").model.gcn_layers == 1  # one GCN block in the code
    model, _ = one_step(hydra("dataset=gref", *TINY))
    assert all(len(level.reasoning.gcn) == 2 for level in model.levels)


def test_fault4_real_datasets_refuse_random_parts_unless_asked(hydra):
    with pytest.raises(ConfigError) as err:
        check_pretrained(hydra("dataset=unc"))
    message = str(err.value)
    assert "\n" not in message
    assert "backbone.weights" in message and "data/README.md#backbone" in message
    assert "backbone.weights=random" in message
    assert "dataset.glove" in message and "data/README.md#glove" in message and "model.glove=false" in message
    with pytest.raises(ConfigError, match="^model.glove=true but dataset.glove is not set"):
        check_pretrained(hydra("dataset=unc", "backbone.weights=random"))
    with pytest.raises(ConfigError, match=r"^backbone.weights is not set.*random i3d"):
        check_pretrained(hydra("dataset=a2d", "backbone=i3d", "model.glove=false"))
    check_pretrained(hydra("dataset=unc", "backbone.weights=random", "model.glove=false"))
    check_pretrained(hydra("dataset=unc", "backbone.weights=/w.pth", "dataset.glove=/g.txt"))
    check_pretrained(hydra("dataset=unc", "experiment=table5_row1", "backbone.weights=random"))  # a row without GloVe
    check_pretrained(hydra("dataset=synthetic"))  # generated benchmark: trains from scratch by design
    check_pretrained(hydra("dataset=synthetic", "dataset.glove=null"))


def test_fault4_train_stops_before_reading_any_data(hydra, tmp_path):
    from cmpc.engine.trainer import train

    cfg = hydra("dataset=unc", f"paths.data={tmp_path / 'nowhere'}", "device=cpu")
    with pytest.raises(ConfigError, match="^backbone.weights is not set"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "run").exists()


def test_released_code_preset_switches_what_the_code_did(hydra):
    cfg = hydra("dataset=unc", "experiment=released_code", *TINY)
    m = cfg.model
    assert (m.tgfe_rounds, m.fusion_tanh, m.word_classifier_activation, m.tgfe_normalize, m.convlstm_peephole) == \
        (2, True, "relu", True, True)
    assert m.cmf and m.glove and m.gcn_layers == 1 and m.fusion_heads == 2  # TINY shrinks r; the preset says 5
    assert hydra("dataset=unc", "experiment=released_code").model.fusion_heads == 5
    model, _ = one_step(cfg)
    assert model.fusion.peephole is not None and model.fusion.peephole.grad.abs().sum() > 0
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_convlstm_peepholes_follow_the_released_cell():
    torch.manual_seed(0)
    plain, peep = ConvLSTM(3, 4), ConvLSTM(3, 4, peephole=True)
    peep.load_state_dict({**plain.state_dict(), "peephole": torch.zeros(3, 4, 1, 1)})
    seq = [torch.randn(2, 3, 5, 5) for _ in range(3)]
    assert torch.allclose(plain(seq), peep(seq))  # zero peepholes: the plain cell
    with torch.no_grad():
        peep.peephole.normal_()

    def reference(xs):  # the released ConvLSTMCell (util/cell.py): peepholes added before the gates' layer norms
        h = torch.zeros(2, 4, 5, 5)
        c = torch.zeros_like(h)
        w_i, w_f, w_o = peep.peephole
        n_i, n_f, n_o, n_g = peep.gate_norms
        for x in xs:
            i, f, o, g = peep.gates(torch.cat([x, h], 1)).chunk(4, 1)
            c = torch.sigmoid(n_f(f + w_f * c) + 1.0) * c + torch.sigmoid(n_i(i + w_i * c)) * torch.tanh(n_g(g))
            o = n_o(o + w_o * c)  # the output gate sees the new cell
            c = peep.cell_norm(c)
            h = torch.sigmoid(o) * torch.tanh(c)
        return h

    assert torch.allclose(peep(seq), reference(seq), atol=1e-6)
    assert not torch.allclose(peep(seq), plain(seq), atol=1e-3)


def test_reproduction_doc_maps_every_row_to_its_config_and_number():
    text = Path(CONFIG_DIR, "..", "docs", "reproduction.md").read_text()
    for r in paper_tables.rows():
        line = next((ln for ln in text.splitlines() if ln.startswith(f"| {r.table} / {r.row} | `{r.experiment}` |")),
                    None)
        assert line is not None, f"docs/reproduction.md has no line for {r.label}"
        first = next(iter(r.paper.values()))
        assert f"oIoU {first['oIoU']:.2f}" in line, r.label
