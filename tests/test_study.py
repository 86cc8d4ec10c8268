"""Study files (validated plain data) and the --plan front door."""
from __future__ import annotations

import json
import time

import pytest

from pipeline import study as study_cli
from pipeline import tracking
from pipeline.data.synth import SynthSpec, generate
from pipeline.spec import list_studies, load_study

PAPER_SCALING = {("R50x1", 7), ("R50x2", 7), ("R101x1", 7), ("R152x1", 7), ("R152x2", 7), ("R152x2", 14),
                 ("R200x3", 14), ("ViT-B/32", 7), ("ViT-B/16", 7), ("ViT-L/32", 7), ("ViT-L/16", 7),
                 ("ViT-L/16", 14), ("ViT-H/14", 14), ("R50+ViT-B/32", 7), ("R50+ViT-B/16", 7),
                 ("R50+ViT-L/32", 7), ("R50+ViT-L/16", 7), ("R50+ViT-L/16", 14)}


def test_packaged_studies_load_and_expand():
    assert {"scaling", "data"} <= set(list_studies())
    scaling = load_study("scaling")
    assert set(scaling.presets) >= {"paper", "tiny", "smoke"}
    runs = scaling.expand("paper")
    assert {(r.model_name, r.epochs) for r in runs} == PAPER_SCALING and len(runs) == 18
    assert len({r.id for r in runs}) == 18
    assert all(r.recipe.batch_size == 4096 and r.recipe.image_size == 224 for r in runs)
    assert {r.family for r in scaling.expand("tiny")} == {"vit", "resnet", "hybrid"}
    data = load_study("data").expand("paper")
    assert {r.subset for r in data} == {"9M", "30M", "90M", "full"}
    assert {r.model_name for r in data} == {"ViT-B/32", "R50x1", "ViT-L/16", "R152x2", "ViT-b/32"}
    assert len({r.recipe.model_dump_json(exclude={"base_lr"}) for r in data}) == 1  # same recipe for all


def test_paper_plan_json(capsys):
    assert study_cli.main(["scaling", "--preset", "paper", "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["runs"]) == 18
    for run in plan["runs"]:
        assert {"id", "model", "family", "subset", "images_seen", "epochs", "exaflops", "status"} <= set(run)
    h14 = next(r for r in plan["runs"] if r["model"] == "ViT-H/14")
    # what pretraining will log: whole steps of 4096, ceil(14 x 303M / 4096) of them
    assert h14["steps"] == 1_035_645 and h14["images_seen"] == 1_035_645 * 4096 == 4_242_001_920
    assert h14["exaflops"] == pytest.approx(4262, rel=0.01)  # paper Table 6
    assert plan["totals"]["runs"] == 18
    assert plan["totals"]["exaflops"] == pytest.approx(sum(r["exaflops"] for r in plan["runs"]))


def test_plan_against_a_dead_server_says_so_in_seconds(capsys):
    """Statuses that cannot be read are 'unknown' (never 'new'), and --plan exits 1 within seconds."""
    start = time.monotonic()
    assert study_cli.main(["scaling", "--preset", "smoke", "--plan", "--json", "--tracking-uri", "http://127.0.0.1:9"]) == 1
    assert time.monotonic() - start < 15
    out = capsys.readouterr()
    plan = json.loads(out.out)
    assert {r["status"] for r in plan["runs"]} == {"unknown"} and plan["totals"]["unknown"] == 2
    assert "could not read run status from http://127.0.0.1:9" in out.err and "Traceback" not in out.err


def test_plan_reads_status_from_mlflow(tmp_path, capsys):
    uri = tracking.default_tracking_uri(tmp_path)
    tracking.init_store(uri)
    runs = load_study("scaling").expand("smoke")
    done = tracking.start_run(uri, "scaling", runs[0].id, tags={}, params={})
    tracking.finish_run(uri, done)
    tracking.start_run(uri, "scaling", runs[1].id, tags={}, params={})  # still RUNNING: partial
    assert study_cli.main(["scaling", "--preset", "smoke", "--plan", "--json", "--storage", str(tmp_path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in plan["runs"]] == ["done", "partial"]
    assert plan["totals"]["done"] == 1 and plan["totals"]["partial"] == 1
    # A FAILED run reads "failed" in the plan, as in the report (one vocabulary).
    tracking.finish_run(uri, tracking.start_run(uri, "scaling", runs[1].id, tags={}, params={}), "FAILED")
    assert study_cli.main(["scaling", "--preset", "smoke", "--plan", "--storage", str(tmp_path)]) == 0
    assert "2 runs: 1 done, 0 partial, 1 failed, 0 new" in capsys.readouterr().out


BAD_STUDIES = [
    ("presets: {p: {dataset: {name: d}, runs: [{model: ViT-Q/16, epochs: 7}]}}\nname: s",
     ["presets.p.runs.0.model", "unknown model 'ViT-Q/16'", "ViT-B/16"]),
    ("name: s\npresets: {p: {dataset: {name: d}, runs: [{model: ViT-B/16}]}}",
     ["presets.p.runs.0", "exactly one of 'epochs' or 'steps'"]),
    ("name: s\npresets: {p: {dataset: {name: d}, runs: [{model: R50x1, epochs: 7, recipe: {lr: 1}}]}}",
     ["unknown recipe field(s) ['lr']", "base_lr"]),
    ("name: s\npresets: {p: {dataset: {name: d}, subsets: [lots], runs: [{model: R50x1, epochs: 7}]}}",
     ["cannot read 'lots' as a count"]),
    ("name: s\npresets: {p: {dataset: {name: d}, recipe: {batch_size: -1}, runs: [{model: R50x1, epochs: 7}]}}",
     ["presets.p.recipe.batch_size", "greater than or equal to 1"]),
    # issue 33, probe 11: a preset without runs crashed --plan; a negative image count was taken
    ("name: s\npresets: {p: {dataset: {name: d}, runs: []}}", ["presets.p.runs", "at least 1 item"]),
    ("name: s\npresets: {p: {dataset: {name: d, images: -1}, runs: [{model: R50x1, epochs: 7}]}}",
     ["presets.p.dataset.images", "count -1 is negative"]),
    ("name: s\npresets: {p: {dataset: {name: d, images: 0}, runs: [{model: R50x1, epochs: 7}]}}",
     ["presets.p.dataset.images", "1 or more, got 0"]),
    ("name: s\npresets: [not, a, mapping]", ["presets", "dictionary"]),
    ("name: [unclosed", ["not valid YAML"]),
]



BILLION_LAUGHS = """name: laughs
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
presets: {x: {dataset: *h}}
"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, "name: loop\npresets: &p {x: *p}\n"], ids=["billion laughs", "self"])
def test_a_study_file_whose_aliases_explode_is_refused_at_once(tmp_path, text):
    """Issue 33, probe 10: ten lines of nested YAML aliases (a billion values once expanded) are
    refused by name in well under a second (the loader used to grow past 1 GB)."""
    path = tmp_path / "laughs.yaml"
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="aliases \\(\\*name\\) expand to more than 100,000 values"):
        load_study(str(path))
    assert time.perf_counter() - start < 5

@pytest.mark.parametrize("text,messages", BAD_STUDIES)
def test_bad_study_files_fail_with_file_field_and_allowed_values(tmp_path, text, messages):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_study(str(path))
    assert str(path) in str(err.value)
    for message in messages:
        assert message in str(err.value)


@pytest.mark.parametrize("argv,message", [
    (["nosuchstudy", "--plan"], "available: data, scaling"),
    (["scaling", "--preset", "huge", "--plan"], "its presets are ['gpu', 'in21k', 'paper', 'smoke', 'tiny']"),
    (["scaling", "--plan", "--mfu", "3"], "--mfu must be in (0, 1]"),
    ([], "give a study name"),
])
def test_bad_cli_values_fail_before_anything_launches(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        study_cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_list(capsys):
    assert study_cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "scaling:" in out and "--preset paper: 18 runs" in out and "--preset paper: 20 runs" in out


def launch_errors(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        study_cli.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_launch_values_fail_before_anything_launches(tmp_path, capsys, monkeypatch):
    import ray
    from pipeline.data.digits import convert_digits
    storage = str(tmp_path / "runs")
    smoke = ["scaling", "--preset", "smoke", "--storage", storage]
    assert "--max-concurrent must be at least 1, got 0" in launch_errors([*smoke, "--max-concurrent", "0"], capsys)
    assert "--gpus-per-run must be 0 (CPU) or more, got -1" in launch_errors([*smoke, "--gpus-per-run", "-1"], capsys)
    missing = str(tmp_path / "nowhere")
    assert f"--data {missing}: not a readable dataset" in launch_errors([*smoke, "--data", missing], capsys)
    convert_digits(tmp_path / "digits", progress=False)
    err = launch_errors([*smoke, "--data", str(tmp_path / "digits")], capsys)
    assert "holds dataset 'digits', but the preset pretrains on 'synth-jft-smoke'" in err
    small = generate(tmp_path / "small" / "synth-jft-smoke", SynthSpec(images=300, classes=5, image_size=16),
                     executor="inline", progress=False)  # the smoke preset's name, 300 of its 512 images
    err = launch_errors([*smoke, "--data", small], capsys)
    assert f"--data {small} holds 300 training images, but the preset declares 512, which its plan" in err
    err = launch_errors(["scaling", "--preset", "paper", "--storage", storage], capsys)
    assert "dataset 'JFT-300M' is not built in: give its location with --data" in err
    # a relative --storage inside a `ray job submit` working dir (Ray's temporary copy) is refused
    job_dir = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    assert "is relative, and this job runs in Ray's temporary copy" in launch_errors(
        ["scaling", "--preset", "smoke", "--storage", "runs"], capsys)
    assert not ray.is_initialized() and not (tmp_path / "runs" / "mlflow.db").exists()


def test_missing_downstream_set_fails_before_launch(tmp_path, capsys):
    import ray
    from pipeline.data.synth import SynthSpec, generate
    study = tmp_path / "study.yaml"
    study.write_text("name: s\npresets:\n  p:\n    dataset: {name: pre}\n    runs: [{model: R50x1, steps: 1}]\n"
                     "    transfer: {fewshot: [pets]}\n")
    generate(tmp_path / "pre", SynthSpec(images=8, classes=2, image_size=8), executor="inline",
             progress=False)
    err = launch_errors([str(study), "--preset", "p", "--data", str(tmp_path / "pre"),
                         "--storage", str(tmp_path / "runs")], capsys)
    assert "downstream dataset 'pets' is not in" in err and "convert it there first" in err
    assert not ray.is_initialized()


@pytest.mark.parametrize("subset", [0.3, "full", "100"])
def test_planned_numbers_are_what_pretraining_derives(subset, tmp_path):
    """For a run given in epochs, the plan (the preset's sizes) and the pretraining (the data
    itself) derive the same steps, images and exaFLOPs, fraction subsets included."""
    from pipeline.planning import run_numbers
    from pipeline.pretrain.launch import Launch, plan_run
    from pipeline.spec import RunSpec, subset_images
    study = load_study("data")
    preset = study.preset("smoke")
    data = generate(tmp_path / preset.dataset.name, preset.dataset.synth, executor="inline", progress=False)
    spec = RunSpec(**{**study.expand("smoke")[0].model_dump(), "subset": subset, "steps": None, "epochs": 3})
    from_plan = run_numbers(spec, subset_images(spec.subset, 512), preset.dataset.head_classes)
    from_data = plan_run(spec, data, Launch()).numbers
    assert from_data == from_plan and from_data.steps == -(-3 * from_data.subset_images // 32)


@pytest.mark.parametrize("name", ["q?x", "p%20x", "with space#1"])
def test_the_mlflow_database_stays_inside_a_storage_whose_path_has_url_characters(tmp_path, name):
    """A '?' ended the SQLite URI's path (the database went to 'q', shared by 'q?a' and 'q?b');
    a '%' was decoded. Now the database is <storage>/mlflow.db whatever the path holds."""
    from pipeline import tracking
    storage = tmp_path / name
    uri = tracking.default_tracking_uri(storage)
    tracking.init_store(uri)
    run_id = tracking.start_run(uri, "probe", "0123456789ab", run_name="probe", tags={}, params={})
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert (storage / "mlflow.db").is_file() and tracking.client(uri).get_run(run_id).info.run_name == "probe"


def test_a_run_listed_twice_is_refused_before_anything_runs(tmp_path, capsys):
    """It was launched twice, one copy refused as held by 'another study', and counted twice in the
    report (issue 33, probe 6)."""
    study = load_study("scaling").preset("smoke")
    entry = study.runs[0].model_dump(mode="json", exclude_none=True)
    text = json.dumps({"name": "twice", "presets": {"smoke": {
        **study.model_dump(mode="json", exclude_none=True, exclude={"runs"}), "runs": [entry, entry]}}})
    path = tmp_path / "twice.yaml"
    path.write_text(text)  # JSON is YAML
    with pytest.raises(SystemExit) as exit_info:
        study_cli.main([str(path), "--preset", "smoke", "--plan"])
    assert exit_info.value.code == 2
    assert "preset 'smoke' lists the run ViT-nano / full / 40 steps twice" in capsys.readouterr().err


def test_plan_of_a_new_storage_lists_every_run_as_new(tmp_path, capsys):
    """No store yet means nothing has run: 'new', not 'unknown' (issue 33, walk point 6)."""
    assert study_cli.main(["scaling", "--preset", "smoke", "--plan", "--json", "--storage", str(tmp_path / "fresh")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in plan["runs"]] == ["new", "new"] and plan["totals"]["unknown"] == 0
    assert not (tmp_path / "fresh").exists()  # planning writes nothing
