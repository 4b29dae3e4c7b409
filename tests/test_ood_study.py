"""The study's findings rule (a comparison holds when it holds in every seed) on hand-made tables, and a study on a
folder dataset without far-OOD sets (its near-OOD findings only, no crash after the runs)."""
import json

from clipood_kit.engine.builder import apply_overrides
from clipood_kit.studies.ood_study import StudyConfig, findings, markdown_tables, run_study, study_experiment


def _cell(mcm_far, mcm_near=50.0, maxlogit=60.0, new=(80.0, 80.0, 80.0)):
    def ms(values):
        return {"mean": sum(values) / len(values), "std": 0.0, "values": list(values)}
    return {"id_accuracy": ms([90.0] * 3), "new_accuracy": ms(new), "ood": {
        "far": {"MCM": {"AUROC": ms(mcm_far), "FPR95": ms([90.0] * 3)},
                "max-logit": {"AUROC": ms([maxlogit] * 3), "FPR95": ms([90.0] * 3)}, "shifts": ["glyphs"]},
        "near": {"MCM": {"AUROC": ms([mcm_near] * 3), "FPR95": ms([90.0] * 3)},
                 "max-logit": {"AUROC": ms([maxlogit] * 3), "FPR95": ms([90.0] * 3)}, "shifts": ["semantic"]}}}


def test_a_comparison_holds_only_when_it_holds_in_every_seed():
    zero = _cell([50.0, 50.0, 50.0])
    # a higher mean (53.3) from one large seed, lower in the other two: does not hold
    mixed = {"zero-shot": {"1": zero, "16": zero}, "coop": {"1": _cell([49.0] * 3), "16": _cell([62.0, 49.0, 49.0])}}
    claim = next(f for f in findings(mixed, [1, 16]) if f["claim"].startswith("Prompt learning detects far-OOD better"))
    assert claim["holds"] is False and "+12.0, -1.0, -1.0" in claim["evidence"]
    steady = {"zero-shot": {"1": zero, "16": zero}, "coop": {"1": _cell([49.0] * 3), "16": _cell([50.5, 51.0, 50.2])}}
    claims = {f["claim"].split(" (")[0]: f for f in findings(steady, [1, 16])}
    assert claims["Prompt learning detects far-OOD better than zero-shot"]["holds"] is True
    assert claims["More shots help prompt learning's far-OOD detection"]["holds"] is True
    # max-logit (60) beats MCM (about 50) by more than a point: MCM is not the best score
    assert claims["MCM is the best score"]["holds"] is False


def test_ogen_s_new_class_claim_is_paired_by_seed():
    """OGEN's claim (new-class accuracy above CoOp's) holds only when OGEN is ahead in every seed."""
    zero, coop = _cell([50.0] * 3), _cell([50.0] * 3, new=(80.0, 81.0, 82.0))
    claim = lambda table: next(f for f in findings(table, [1, 16]) if f["claim"].startswith("OGEN classifies"))  # noqa
    ahead = {"zero-shot": {"1": zero, "16": zero}, "coop": {"1": coop, "16": coop},
             "ogen": {"1": coop, "16": _cell([50.0] * 3, new=(80.5, 81.5, 82.5))}}
    assert claim(ahead)["holds"] is True and "+0.5, +0.5, +0.5" in claim(ahead)["evidence"]
    one_seed = dict(ahead, ogen={"1": coop, "16": _cell([50.0] * 3, new=(89.0, 80.0, 81.0))})   # higher mean
    assert claim(one_seed)["holds"] is False
    assert not any(f["claim"].startswith("OGEN") for f in findings({"coop": ahead["coop"]}, [1, 16]))


def test_a_folder_study_without_far_sets_reports_its_near_findings(world_tree, tmp_path):
    exp = apply_overrides(study_experiment(fast=True), data=str(world_tree), cache_dir="off")
    cfg = StudyConfig(experiment=exp, methods=("zero-shot", "coop"), shots=(1, 2), seeds=(0,), official_budgets=False)
    results = run_study(cfg, tmp_path, progress=False)
    assert set(results["shift_kinds"].values()) <= {"near", "covariate"}
    assert results["findings"] and all("far-OOD" not in f["claim"] for f in results["findings"])
    assert "/ -" in markdown_tables(results)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["table"]["coop"]["2"]["ood"]["near"]["MCM"]["AUROC"]["values"]
    assert (tmp_path / "report.html").read_text().count("plotly-graph-div") >= 2


def test_each_method_trains_with_its_official_budget_and_full_fine_tuning_with_the_experiments():
    from clipood_kit.studies.ood_study import BUDGETS, budgets_used
    cfg = StudyConfig(shots=(1, 2, 4, 8, 16))
    base = cfg.experiment.train
    coop = [cfg.spec("coop", k, 0).train for k in (1, 2, 4, 8, 16)]
    assert [t.epochs for t in coop] == [50, 100, 100, 200, 200]          # CoOp's COOP.md, per shot count
    assert all(t.optimizer == "sgd" and t.schedule == "dassl" and t.lr == 2e-3 and t.batch_size == 32 for t in coop)
    cocoop = cfg.spec("cocoop", 16, 0).train
    assert (cocoop.epochs, cocoop.batch_size) == (10, 1)
    tip = cfg.spec("tip-adapter-f", 4, 0).train
    assert (tip.epochs, tip.batch_size, tip.optimizer, tip.schedule) == (20, 256, "adamw", "cosine")
    assert cfg.spec("ce", 16, 0).train == base                              # no official few-shot schedule
    used = budgets_used(cfg)
    assert used["coop"]["epochs"] == {"1": 50, "2": 100, "4": 100, "8": 200, "16": 200}
    assert "COOP.md" in used["coop"]["source"] and "no official" in used["ce"]["source"]
    assert set(BUDGETS) <= set(cfg.methods)
    off = StudyConfig(official_budgets=False)
    assert off.spec("coop", 16, 0).train == base


def test_the_report_shows_the_steps_each_method_ran_per_shot_count():
    """budget_rows reads the steps from the runs (two seeds that differ show both), the epochs from the budget."""
    from clipood_kit.studies.ood_study import budget_rows, budgets_used
    cfg = StudyConfig(methods=("zero-shot", "coop", "ce"), shots=(1, 16), seeds=(0, 1))
    runs = [{"method": "coop", "shots": 1, "seed": s, "train_steps": 50} for s in (0, 1)]
    runs += [{"method": "coop", "shots": 16, "seed": 0, "train_steps": 1200},
             {"method": "coop", "shots": 16, "seed": 1, "train_steps": 1000}]
    runs += [{"method": "ce", "shots": k, "seed": s, "train_steps": 80} for k in (1, 16) for s in (0, 1)]
    results = {"config": {"shots": [1, 16], "budgets": budgets_used(cfg)}, "runs": runs}
    rows = budget_rows(results)
    assert rows["coop"]["1 shots"] == "50 (50 ep)" and rows["coop"]["16 shots"] == "1000/1200 (200 ep)"
    assert rows["coop"]["batch"] == "32" and "COOP.md" in rows["coop"]["source"]
    assert rows["ce"]["16 shots"] == "80" and rows["ce"]["lr"] == "0.0001"
    from clipood_kit.viz.report import table_html
    assert table_html(rows, list(rows["coop"])) in _report_of(results)


def _report_of(results):
    """study_report's page for a results dict that holds only the budgets and the runs (no scores)."""
    from clipood_kit.viz.report import study_report
    page = study_report(dict(results, study="s", table={}, findings=[], shift_kinds={}, seconds=1.0,
                             runner={"executor": "serial", "workers": 1},
                             config=dict(results["config"], methods=["coop", "ce"], seeds=[0, 1], not_built=[])))
    return page
