"""`tower-detector search`: Hyperopt TPE over the original project's hyperparameter space, every trial kept, resumable.

SEARCH_DIR layout:
  history.json     every trial: tid, hyperopt's vals (choice indices), the params trained, status
                   ("running" | "ok" | "failed"), metrics, model dir. Rewritten (atomically) after each trial.
  trials/NNN/      each trial's model directory (train's layout; trials/NNN.partial while it trains)
  best/            a copy of the best trial's model directory, by --metric on the validation split (replaced
                   whole, atomic.building)
  summary.csv      one row per finished trial, best first (also printed): the validation figure it was chosen by,
                   then the test split's figures, which only report (choosing by them would flatter them)

The dataset must have a validation split of its own (a `val` split): a search without one would choose on the
test split, so it is refused rather than run.

Resuming reads history.json only (no pickles from shared storage): finished trials are fed back to TPE as
history, and a trial that was running when the search was killed is trained again with its own params,
which resumes its training where it stopped. TPE's random state is seeded from --seed and the number of
trials done, so a resumed search proposes what an uninterrupted one given the same history would.

Space (--space space.json): {"name": {"choice": [...]} | {"uniform": [lo, hi]} | {"loguniform": [lo, hi]} |
{"int": [lo, hi]}}, names from the model's parameters. The default is the original project's.
"""

import csv
import json
import math
import os
import shutil
from functools import partial

import numpy as np

from ..common.atomic import atomic_file, building
from ..common.errors import UserError
from .model import check_weights
from .params import DEFAULT_PARAMS, check_backbone_weights, check_params, default_params, load_params_file

ORIGINAL_SPACE = {
    "optimizer": {"choice": ["adam", "rmsprop", "sgd"]},
    "lr_phase1": {"loguniform": [1e-4, 1e-3]},
    "lr_phase2": {"loguniform": [1e-5, 5e-4]},
    "weight_init": {"choice": ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal"]},
    "freeze_cutoff": {"choice": [0, 36, 76, 116]},  # all; from the middle flow; its second half; exit flow
    "dense_size": {"choice": [128, 256, 512]},
    "dense_activation": {"choice": ["relu", "elu"]},
    "dropout": {"uniform": [0.0, 0.6]},
    "epochs_phase1": {"int": [2, 4]},
}
METRICS = ("pr_auc", "roc_auc", "accuracy")  # the first is the default: towers are rare, PR AUC sees the rare class
REPORTED = ("pr_auc", "roc_auc", "accuracy")  # the test split's figures in the summary
RANDOM_TRIALS = 3  # TPE's first trials are random, as the original project's


def hyperopt_space(spec):
    """Our JSON space -> hyperopt's, checked: unknown parameters or forms are UserErrors."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    space = {}
    for name, rule in spec.items():
        if name not in DEFAULT_PARAMS:
            raise UserError(f"space: unknown parameter {name!r}")
        if not isinstance(rule, dict) or len(rule) != 1:
            raise UserError(f'space: {name} must be {{"choice": [...]}}, {{"uniform": [lo, hi]}}, '
                            '{"loguniform": [lo, hi]} or {"int": [lo, hi]}')
        (kind, args), = rule.items()
        if kind == "choice" and isinstance(args, list) and args:
            space[name] = hp.choice(name, args)
            continue
        if kind not in ("uniform", "loguniform", "int") or not (isinstance(args, list) and len(args) == 2) \
                or not all(isinstance(a, (int, float)) for a in args) or args[0] > args[1]:
            raise UserError(f"space: {name}: {kind} {args!r} is not a valid rule (need [lo, hi] with lo <= hi)")
        lo, hi = args
        if kind == "uniform":
            space[name] = hp.uniform(name, lo, hi)
        elif kind == "loguniform":
            if lo <= 0:
                raise UserError(f"space: {name}: loguniform needs lo > 0")
            space[name] = hp.loguniform(name, math.log(lo), math.log(hi))
        else:
            space[name] = scope.int(hp.quniform(name, lo - 0.5, hi + 0.5, 1))
    return space


def search(data_dir, out, trials, space=None, metric=METRICS[0], params=None, weights="none", seed=0,
           progress=None, log=print):
    from .train import TrainingData, train

    progress = progress or (lambda *a, **k: None)
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}")
    if trials < 1:
        raise UserError("--trials must be at least 1")
    data = TrainingData(data_dir)
    if "val" not in data.splits:
        raise UserError(f"search chooses its best trial on the validation split, and {data_dir} has none (it has "
                        f"{', '.join(sorted(data.splits))}): rebuild the dataset with --split 0.7,0.15,0.15")
    data.roles(lambda *a, **k: None)  # bad data fails here, not in every trial
    spec = load_params_file(space) if isinstance(space, str) else (space or ORIGINAL_SPACE)
    fixed = check_params(params or {}, base=default_params(weights, (params or {}).get("backbone")))
    check_backbone_weights(fixed, weights)
    check_weights(weights)

    from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, tpe
    from hyperopt.exceptions import AllTrialsFailed

    hp_space = hyperopt_space(spec)
    os.makedirs(os.path.join(out, "trials"), exist_ok=True)
    history = _History(out, dict(data=os.path.abspath(data_dir), space=spec, metric=metric, fixed=fixed,
                                 weights=weights, seed=seed, selected_on="validation"))

    def run_trial(tid, trial_params):
        model_dir = os.path.join(out, "trials", f"{tid:03d}")
        log(f"trial {tid + 1}/{trials}: " + ", ".join(f"{k} {_short(trial_params[k])}" for k in sorted(spec)))
        try:
            result = train(data_dir, model_dir, trial_params, weights=weights, log=lambda m: log(f"  {m}"))
        except UserError as exc:
            if "different training" in str(exc) or "not a training of ours" in str(exc):
                raise
            return {"status": "failed", "error": str(exc)}
        validation = result.get("validation") or {}
        return {"status": "ok", "metrics": {k: result.get(k) for k in ("accuracy", "roc_auc", "pr_auc", "precision",
                                                                          "recall", "f1", "thresholds")},
                "validation": validation, "value": validation.get(metric), "model_dir": model_dir}

    # a trial killed mid-way first: same params, so its training resumes
    for entry in history.entries:
        if entry["status"] == "running":
            entry.update(run_trial(entry["tid"], entry["params"]))
            history.save()
    done = len(history.entries)
    progress(done, trials, stage="trials")

    def objective(sampled):
        tid = len(history.entries)
        trial_params = check_params({k: _plain(v) for k, v in sampled.items()}, base=fixed)
        entry = {"tid": tid, "vals": _current_vals[0], "params": trial_params, "status": "running"}
        history.entries.append(entry)
        history.save()
        entry.update(run_trial(tid, trial_params))
        history.save()
        progress(tid + 1, trials, stage="trials", trial=tid, value=entry.get("value"))
        if entry["status"] != "ok" or entry["value"] is None:
            return {"status": STATUS_FAIL, "loss": None}
        return {"status": STATUS_OK, "loss": -float(entry["value"])}

    _current_vals = [None]
    hp_trials = Trials()
    history.feed(hp_trials)
    if done < trials:
        suggest = partial(tpe.suggest, n_startup_jobs=RANDOM_TRIALS)

        def remembering_suggest(new_ids, domain, trials_, rstate):
            docs = suggest(new_ids, domain, trials_, rstate)
            _current_vals[0] = {k: [_plain(x) for x in v] for k, v in docs[0]["misc"]["vals"].items()}
            return docs

        try:
            fmin(objective, hp_space, algo=remembering_suggest, max_evals=trials, trials=hp_trials,
                 rstate=np.random.default_rng(seed + done), show_progressbar=False)
        except AllTrialsFailed:
            pass  # _finish says so in one line
    return _finish(out, history, metric, log)


def _plain(value):
    """numpy scalars from hyperopt -> Python numbers (for JSON and our parameter checks)."""
    return value.item() if hasattr(value, "item") else value


def _short(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class _History:
    def __init__(self, out, identity):
        self.path = os.path.join(out, "history.json")
        self.identity = identity
        self.entries = []
        if os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    saved = json.load(f)
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot read the search history {self.path}: {exc}") from None
            if saved.get("identity") != json.loads(json.dumps(identity)):
                raise UserError(f"{out} holds a different search (other data, space, metric or parameters): "
                                "give a new --out")
            self.entries = saved["trials"]

    def save(self):
        with atomic_file(self.path) as f:
            json.dump({"identity": self.identity, "trials": self.entries}, f, indent=1)

    def feed(self, hp_trials):
        """Finished trials into hyperopt's Trials, as if it had run them (its documented doc format)."""
        from hyperopt import JOB_STATE_DONE, STATUS_FAIL, STATUS_OK

        entries = [e for e in self.entries if e.get("vals") is not None]
        if not entries:
            return
        tids = [e["tid"] for e in entries]
        results = [{"status": STATUS_OK, "loss": -float(e["value"])} if e["status"] == "ok" and e.get("value")
                   is not None else {"status": STATUS_FAIL} for e in entries]
        miscs = [{"tid": e["tid"], "cmd": ("domain_attachment", "FMinIter_Domain"), "workdir": None,
                  "idxs": {k: [e["tid"]] if v else [] for k, v in e["vals"].items()}, "vals": e["vals"]}
                 for e in entries]
        docs = hp_trials.new_trial_docs(tids, [None] * len(tids), results, miscs)
        for doc in docs:
            doc["state"] = JOB_STATE_DONE
        hp_trials.insert_trial_docs(docs)
        hp_trials.refresh()


def ranked_trials(entries):
    """The finished trials, best first: by their "value", the validation split's --metric (never the test
    split's, which only reports); equal values keep the earlier trial first."""
    finished = [e for e in entries if e["status"] == "ok" and e.get("value") is not None]
    return sorted(finished, key=lambda e: (-e["value"], e["tid"]))


def _finish(out, history, metric, log):
    finished = ranked_trials(history.entries)
    if not finished:
        raise UserError("no trial finished: see the log for each trial's reason")
    best = finished[0]
    target = os.path.join(out, "best")
    with building(target) as folder:
        shutil.copytree(best["model_dir"], folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("backup", "checkpoints", "tensorboard"))
    names = sorted({k for e in finished for k in e["params"]} & set(history.identity["space"]))
    rows = [[e["tid"], round(e["value"], 4), *(_rounded(e["metrics"].get(m)) for m in REPORTED),
             *(_short(e["params"][k]) for k in names)] for e in finished]
    header = ["trial", f"val_{metric}", *(f"test_{m}" for m in REPORTED), *names]
    with atomic_file(os.path.join(out, "summary.csv"), newline="") as f:
        csv.writer(f).writerows([header, *rows])
    failed = [e for e in history.entries if e["status"] == "failed"]
    table = "\n".join("  ".join(str(c) for c in row) for row in [header, *rows])
    log(f"{len(finished)} trials finished, {len(failed)} failed; best: trial {best['tid']} (validation {metric} "
        f"{best['value']:.4f}), copied to {target}")
    return {"best_trial": best["tid"], "best_value": best["value"], "metric": metric, "selected_on": "validation",
            "best_test": {m: best["metrics"].get(m) for m in REPORTED}, "trials": len(finished),
            "failed": len(failed), "best_dir": target, "best_params": best["params"], "table": table}


def _rounded(value):
    return "" if value is None else round(value, 4)
