"""Tables and the README's generated results: computed from the rows, and the README matches the results files."""

import json
import math

import pandas as pd
import pytest

from post import bench_report, evaluate, files, plots, report, tables
from post.membership import ci_text


def rows(task, zs, full, post, seed=0, epsilon="inf"):
    base = {"task": task, "n": 100, "seed": seed, "model": "m"}
    return [{**base, "method": "ZS", "epsilon": "-", "accuracy": zs},
            {**base, "method": "FullPT", "epsilon": epsilon, "accuracy": full},
            {**base, "method": "POST", "epsilon": epsilon, "accuracy": post},
            {**base, "method": "CompPT", "epsilon": "4", "accuracy": 0.1}]  # an epsilon the table leaves out


def test_accuracy_table_has_one_row_per_task_and_the_recovery():
    table = tables.accuracy_table(rows("a", 0.6, 0.8, 0.75) + rows("b", 0.5, 0.4, 0.45), ("inf",))
    assert list(table.columns) == ["task", "test n", "seeds", "ZS", "FullPT", "POST", "recovery"]
    a, b = table.set_index("task").loc["a"], table.set_index("task").loc["b"]
    assert a.recovery == pytest.approx(0.75) and a.seeds == 1 and a["test n"] == 100
    assert math.isnan(b.recovery)  # FullPT below zero-shot: nothing to recover


def test_accuracy_table_averages_seeds_and_reports_their_spread():
    data = rows("a", 0.6, 0.8, 0.7, seed=0) + rows("a", 0.6, 0.8, 0.8, seed=1)
    data = [r for i, r in enumerate(data) if not (r["method"] == "ZS" and i > 3)]
    table = tables.accuracy_table(data, ("inf",)).set_index("task")
    assert table.loc["a", "POST"] == pytest.approx(0.75) and table.loc["a", "seeds"] == 2
    assert table.loc["a", "POST std"] == pytest.approx(pd.Series([0.7, 0.8]).std())


def test_seed_spread_names_only_sources_measured_with_several_owner_seeds():
    table = pd.DataFrame({"source": ["a", "a", "a", "b", "c", "c"], "distillation": ["readout"] * 6,
                          "transfer": ["labels"] * 5 + ["vocab"], "owner seed": [0, 1, 2, 0, 0, 0],
                          "Direct": [0.6, 0.7, 0.65, 0.6, 0.6, 0.6], "POST": [0.70, 0.80, 0.75, 0.60, 0.6, 0.7]})
    text = bench_report._seed_spread(table)
    assert "3 seeds) on a (readout), Direct ranges 0.600-0.700 and POST 0.700-0.800 (standard deviation 0.050)" in text
    assert " b " not in text and " c " not in text  # one seed; two transfers of one seed are not a seed spread


def test_threshold_only_reads_the_reference_and_is_silent_without_it():
    ref = {"zero_shot": 0.7, "fullpt": 0.9, "zero_shot_auc": 0.85, "threshold_oracle": 0.8, "threshold_centred": 0.75}
    text = bench_report._threshold_only(ref)
    assert "AUC 0.850" in text and "at best 0.800 (recovery 0.50" in text and "gives 0.750" in text
    assert bench_report._threshold_only({"zero_shot": 0.7, "fullpt": 0.9}) == ""


def test_levers_average_each_variant_over_owner_seeds_beside_the_same_transfer_unchanged():
    point = {"shape": "4+2", "mode": "readout", "transfer_space": "labels", "transfer_steps": 120}
    runs = [{"variant": v, "owner_seed": seed, "compt": 0.7, "direct": 0.6, "post": post, "post_selected_step": 20,
             "post_last": post, "post_last_step": 40, "recovery": 0.5}
            for v, seed, post in (("alpha=1", 0, 0.80), ("alpha=1", 1, 0.70), ("lr=0.1", 0, 0.65))]
    d = {"settings": {"seed": 0, "transfer": {"space": "labels", "steps": 120}},
         "points": [{**point, "post": 0.74}, {**point, "post": 0.76}, {**point, "transfer_steps": 40, "post": 0.1}],
         "levers": {"point": "4+2-readout", "runs": runs}}
    text, table = bench_report._levers(d)
    assert "alpha=1 0.750; lr=0.1 0.650; the profile's transfer on the same source (the points above): 0.750." in text
    assert table.count("\n") == 4 and "| alpha=1 | 1 |" in table  # a row a run
    assert bench_report._levers({"points": []}) == []


def test_an_audit_of_another_source_than_the_results_says_so(tmp_path):
    (tmp_path / "distill.json").write_text('{"distill_hash": "new"}')
    assert report._audit_source({"distill_hash": "new"}, tmp_path) == []
    assert "names distillation old; the results: new" in report._audit_source({"distill_hash": "old"}, tmp_path)[0]
    assert "no distillation" in report._audit_source({}, tmp_path)[0]
    assert report._audit_source({}, tmp_path / "nowhere") == []  # no distillation record: nothing to compare


def test_a_failed_audit_control_is_named_above_the_audit_tables():
    def lira(setting, ci):
        return {"variant": "online", "model": "source", "setting": setting, "auc_ci": ci}
    canary = {"setting": "eps=1", "epsilon": "1", "eps_hat": 0.0}
    passing = {"lira": [lira("positive control", [0.55, 0.9]), lira("null control", [0.4, 0.6])], "canaries": [canary]}
    assert report._failed_controls(passing) == []
    failing = {**passing, "lira": [lira("positive control", [0.472, 0.84]), lira("null control", [0.4, 0.6])]}
    (line,) = report._failed_controls(failing)
    assert "positive control leaks (AUC CI above 0.5): CI low 0.472" in line and "null" not in line


def test_dp_columns_are_named_by_epsilon():
    table = tables.accuracy_table(rows("a", 0.6, 0.8, 0.7) + rows("a", 0.6, 0.7, 0.65, epsilon="8")[1:],
                                  ("inf", "8"))
    assert {"POST", "POST eps=8", "FullPT eps=8", "recovery eps=8"} <= set(table.columns)
    assert table.loc[0, "recovery eps=8"] == pytest.approx(0.5)
    no_dp_full = tables.accuracy_table(rows("a", 0.6, 0.8, 0.7) + [rows("a", 0.6, 0.7, 0.65, epsilon="8")[2]],
                                       ("inf", "8"))
    assert no_dp_full.loc[0, "recovery eps=8"] == pytest.approx(0.25)  # (0.65 - 0.6) / (0.8 - 0.6)


def test_paper_rows_are_labelled_and_their_recovery_matches_the_paper():
    paper = tables.accuracy_vs_paper(tables.accuracy_table(rows("rotten_tomatoes", 0.7, 0.85, 0.8), ("inf",)))
    assert paper.target.str.contains("paper").sum() == 3 and paper.target.str.contains("ours").sum() == 1
    # by hand from docs/paper.md: (87.16-72.25)/(91.74-72.25), (85.89-60.78)/(94.84-60.78), (89.33-78.67)/(94.84-78.67)
    assert paper.recovery[:3].round(3).tolist() == [0.765, 0.737, 0.659]
    assert paper.recovery.iloc[3] == pytest.approx(2 / 3)


def test_confidence_intervals_print_alike_in_every_table():
    assert ci_text([0.43, 0.6]) == "[0.430, 0.600]" and ci_text((0.1, 0.25)) == "[0.100, 0.250]"
    assert ci_text(None) == ci_text(float("nan")) == "-"


def test_recovery_uses_fullpt_at_the_same_epsilon_else_the_non_private_one():
    rows = [{"method": "ZS", "epsilon": "-", "accuracy": 0.6}, {"method": "FullPT", "epsilon": "inf", "accuracy": 0.8},
            {"method": "POST", "epsilon": "inf", "accuracy": 0.75}, {"method": "POST", "epsilon": "8", "accuracy": 0.65},
            {"method": "FullPT", "epsilon": "4", "accuracy": 0.5}, {"method": "POST", "epsilon": "4", "accuracy": 0.7}]
    out = tables.recovery(rows)
    assert out == pytest.approx({"inf": 0.75, "8": 0.25})  # eps=4: FullPT below ZS, nothing to recover


def test_update_block_replaces_only_the_generated_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{report.BEGIN}\nold numbers\n{report.END}\n\nafter\n")
    assert report.update_block(readme, "new numbers") and not report.update_block(readme, "new numbers")
    assert readme.read_text() == f"# title\n\nbefore\n\n{report.BEGIN}\n\nnew numbers\n\n{report.END}\n\nafter\n"
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        report.update_block(readme, "new numbers")


def test_stage_times_name_the_lines_a_run_made_short_by_reading_work_back(tmp_path):
    """A stage that read back prompts or audit parts made before runs in seconds: its line says what making them
    took, and says nothing when the stage made them itself."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "tune.json").write_text(json.dumps([{"train_seconds": 100.0, "eval_seconds": 10.0},
                                                    {"train_seconds": 50.0, "eval_seconds": None}]))
    (tmp_path / "audit.json").write_text(json.dumps({"wall_seconds": {"shadows": 20.0, "canaries": 10.0,
                                                                      "total": 30.0}}))

    def note(walls: str) -> str:
        (tmp_path / "notebooks" / "wall_seconds.txt").write_text(walls)
        return report._stage_times(tmp_path, "cpu")[1]

    reused = note("02_tune 13\n04_evaluate 100\n05_privacy_audit 50\n")
    assert "| total | 163 |" in reused
    assert "02's line is the notebook's last run, which read back prompts tuned by an earlier run" in reused
    assert "took 160 s." in reused and "05's line" not in reused  # the audit made its 30 s of parts in 50 s
    made = note("02_tune 170\n05_privacy_audit 12\n")
    assert "02's line" not in made and "05's line is the notebook's last run" in made and "took 30 s." in made


@pytest.mark.parametrize("path", sorted(report.GENERATED))
def test_generated_results_match_the_committed_results_files(path):
    """RESULTS.md and the README's headline are regenerated from results/cpu/; run `python -m post.report` (or
    `make report`) after a cpu run."""
    assert report.generated_block(path) == report.GENERATED[path](report.REPORT_PROFILE).strip()


def test_cost_curves_follow_each_method_as_it_spends(tiny, tmp_path, monkeypatch):
    """FullPT's curve is its own validation record; POST's starts after the whole CompPT run at Direct (the source
    prompt pasted on the target) and follows the transfer's snapshots at the transfer's cost so far."""
    import torch

    from post import artifacts, public_data, transfer, tune
    from post.config import load_config
    from post.evaluate import accuracy
    from post.tasks import get_task, load_split

    for name in ("ARTIFACTS", "RESULTS", "FIGURES"):
        monkeypatch.setattr(artifacts, name, tmp_path / name.lower())
    torch.set_num_threads(1)
    model, tok = tiny  # the source and the target alike: the curves' bookkeeping does not depend on the models
    cfg = load_config("smoke", {"data": {"tasks": ["rotten_tomatoes"]}, "tune": {"lr": 0.05, "eval_every": 2},
                                "transfer": {"steps": 4, "eval_every": 2, "public_examples": 16}})
    task, validation = get_task("rotten_tomatoes"), tune.owner_validation(cfg, "rotten_tomatoes")
    train = load_split(task.name, "train", 16)
    for method in ("fullpt", "compt"):
        made = tune.tune_prompt(model, tok, task, train, cfg.tune, math.inf, 6, validation, progress=False)
        made.save(artifacts.prompt_path("smoke", task.name, method, math.inf))
    compt = transfer.SoftPrompt.load(artifacts.prompt_path("smoke", task.name, "compt", math.inf))
    prepared = public_data.prepare(cfg, model, model, tok, task.name)
    result, _ = transfer.post_transfer(cfg, model, model, tok, prepared, compt, progress=False)
    transfer.save_run(artifacts.prompt_path("smoke", task.name, "post", math.inf), result)
    files.write_json(artifacts.results_dir("smoke") / "transfer_history.json", {"rotten_tomatoes/inf": result.history})

    curves = evaluate.cost_curves(cfg, model, tok, progress=False)
    full, post_curve = (curves[curves.method == m] for m in ("FullPT", "POST"))
    record = tune.read_record(artifacts.prompt_path("smoke", task.name, "fullpt", math.inf))
    assert list(full.step) == record["validation"]["step"] == [0, 2, 4, 6]
    assert list(full.flops) == record["validation"]["flops"] and full.flops.is_monotonic_increasing
    tuning = tune.read_record(artifacts.prompt_path("smoke", task.name, "compt", math.inf))["cost"]
    setup = prepared.cost.flops
    assert post_curve.flops.iloc[0] > tuning["flops"] + setup and post_curve.flops.is_monotonic_increasing
    assert post_curve.flops.iloc[-1] == tuning["flops"] + result.cost.flops  # the last evaluation ends the run
    direct = accuracy(model, tok, task, validation, compt, max_text_tokens=cfg.data.max_text_tokens)["accuracy"]
    assert list(post_curve.step) == [0, 2, 4] and post_curve.accuracy.iloc[0] == direct
    kept = curves[curves.kept]
    assert list(kept.method) == ["FullPT", "POST"]
    assert list(kept.step) == [record["selected_step"], result.selected_step]

    costs = pd.DataFrame([{"task": task.name, "item": "distillation (once)", "flops": 1e15, "wall_seconds": 100.0}])
    plots.plot_cost_curves(curves, costs, "smoke")
    drawn = pd.read_csv(artifacts.figures_dir("smoke") / "accuracy_vs_cumulative_cost.csv")
    charged = drawn[drawn.method == "POST + distillation"]
    assert list(charged.flops) == list(post_curve.flops + 1e15)
    assert list(charged.wall_seconds) == pytest.approx(list(post_curve.wall_seconds + 100.0))


def test_curve_summary_reads_the_kept_steps_and_what_fullpt_spent_to_match_post():
    curves = pd.DataFrame(
        [{"task": "t", "method": "FullPT", "step": s, "accuracy": a, "flops": f, "wall_seconds": f / 1e12,
          "kept": s == 20} for s, a, f in ((0, 0.5, 1e12), (10, 0.7, 2e12), (20, 0.8, 3e12), (30, 0.75, 4e12))]
        + [{"task": "t", "method": "POST", "step": s, "accuracy": a, "flops": f, "wall_seconds": 1.0, "kept": s == 5}
           for s, a, f in ((0, 0.6, 0.5e12), (5, 0.65, 0.7e12), (10, 0.62, 0.9e12))])
    table = tables.curve_summary(curves).set_index("method")
    assert table.loc["FullPT", "kept step"] == 20 and table.loc["FullPT", "last step"] == 30
    assert table.loc["FullPT", "TFLOPs to kept"] == 3 and table.loc["FullPT", "TFLOPs in all"] == 4
    assert table.loc["POST", "validation accuracy"] == 0.65 and table.loc["POST", "TFLOPs in all"] == 0.9
    assert table.loc["POST", "FullPT TFLOPs to match"] == 2  # FullPT first reached 0.65 at step 10
    never = tables.curve_summary(curves.assign(accuracy=[0.5, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9]))
    assert math.isnan(never.set_index("method").loc["POST", "FullPT TFLOPs to match"])
