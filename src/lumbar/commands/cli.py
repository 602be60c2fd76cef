"""`python -m lumbar <command>`: synth · validate · train · export · predict · score · show · bench."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
import time
from pathlib import Path


def _typed(typ: type, key: str):
    """An argparse type that parses like `key=value` overrides do (config.coerce)."""
    from ..config import ConfigError, coerce

    def parse(value: str):
        try:
            return coerce(value, typ, key)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per plain field of a config dataclass, typed and defaulted by it, so
    the command line restates no default."""
    from ..config import field_docs

    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if f.name in skip or typ not in (bool, int, float, str):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        what = docs.get(f.name, "")
        parser.add_argument("--" + f.name.replace("_", "-"), type=_typed(typ, f.name), default=default,
                            help=f"{what} (default: {default})".strip().replace("%", "%%"))


def stage_options() -> str:
    """Every trainable stage's `key=value` overrides: name, default and what it does (the comment written
    with the field, as `--help` says it for the other commands)."""
    from .. import train  # noqa: F401  (importing the package registers every trainer's config)
    from ..config import field_docs
    from ..train.runner import CONFIGS, stages

    lines = []
    for name in stages():
        cls = CONFIGS.get(name)
        if cls is None:
            continue
        docs = field_docs(cls)
        lines.append(f"--model {name} ({cls.__name__}):")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name}={default}  {docs.get(f.name, '')}".rstrip())
    return "\n".join(lines)


class _StageOptions(argparse.Action):
    """`train --options`: print stage_options() and exit, like --help (before --model is asked for)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(stage_options())
        parser.exit()


def dataclass_from(cls: type, a: argparse.Namespace):
    """The config dataclass from the options `dataclass_options` added."""
    return cls(**{f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if hasattr(a, f.name)})


def _cmd_synth(a) -> int:
    from ..data.synth import SynthConfig, generate
    cfg = dataclass_from(SynthConfig, a)
    t = time.time()
    out = generate(cfg)
    print(f"synth: {cfg.studies} train + {cfg.test_studies} test studies in {out} ({time.time() - t:.0f}s)")
    return 0


def _cmd_validate(a) -> int:
    from ..data.catalog import validate
    problems = validate(a.dir)
    for p in problems:
        print(p.text())
    print(f"validate: {a.dir}: {len(problems)} problem(s)")
    return 1 if problems else 0


def _cmd_train(a) -> int:
    from ..config import file_overrides
    from ..train.runner import RunConfig, finished, takes, train
    t = time.time()
    overrides = (file_overrides(a.config) if a.config else []) + a.overrides
    if a.device and takes(a.model, "device"):  # the crops, the prior and the ensemble have no device
        overrides.append(f"device={a.device}")
    if a.backbones and takes(a.model, "backbone_checkpoint"):
        overrides.append(f"backbone_checkpoint={a.backbones}")
    rc = RunConfig(n_folds=a.folds, seed=a.seed)
    done = None if a.retrain or a.model == "all" else finished(a.model, a.data, a.run, rc, overrides)
    if done is not None:
        print(f"train {a.model}: reused: {done} was written for the same data, folds and overrides, after the "
              "stages before it (--retrain trains it again)")
        return 0
    result = train(a.model, a.data, a.run, rc, overrides)
    print(f"train {a.model}: done in {time.time() - t:.0f}s; " + ", ".join(f"{k}={v}" for k, v in result.items()))
    return 0


def _cmd_preset(a) -> int:
    """Which preset `make train` uses, and whether this machine can run it (before any stage starts)."""
    from ..train.preset import check_preset
    for line in check_preset(a.dir, a.device):
        print(f"train: {line}")
    return 0


def write_presets(folder: str | Path = "configs") -> list[Path]:
    """configs/tiny/<stage>.json: every stage's config dataclass at its defaults (the tiny CPU configs);
    configs/gpu/<stage>.json completed with the fields they lack (their own values kept). A preset
    always holds every field, so a file says everything the stage will run with."""
    import json

    from .. import config as cfgmod
    from ..files import write_json
    from ..train.runner import CONFIGS

    folder, written = Path(folder), []
    for stage, cls in sorted(CONFIGS.items()):
        write_json(folder / "tiny" / f"{stage}.json", cfgmod.to_dict(cls()))
        written.append(folder / "tiny" / f"{stage}.json")
        gpu = folder / "gpu" / f"{stage}.json"
        own = json.loads(gpu.read_text()) if gpu.exists() else {}
        cfg = cfgmod.from_dict(cls, {**cfgmod.to_dict(cls()), **own})
        write_json(gpu, cfgmod.to_dict(cfg))
        written.append(gpu)
    return written


def _cmd_configs(a) -> int:
    paths = write_presets(a.out)
    print(f"configs: {len(paths)} presets written under {a.out}/ (tiny/, gpu/)")
    return 0


def _cmd_export(a) -> int:
    from ..train.export import export_weights
    m = export_weights(a.run, a.data, a.out)
    models = ", ".join(f"{k} ({v['folds']} folds, OOF {v['oof_score']})" for k, v in m["models"].items()) or "prior only"
    print(f"export: {len(m['artefacts'])} files to {a.out} with manifest.json; models: {models}")
    return 0


def _cmd_predict(a) -> int:
    from ..infer.engine import predict
    from ..infer.settings import PredictConfig
    cfg = dataclass_from(PredictConfig, a)
    res = predict(a.data, a.weights, a.out, cfg)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in res["timings"].items())
    print(f"predict: {res['predicted']}/{res['studies']} studies in {res['seconds']:.1f}s on {res['device']} "
          f"({stages}); {res['failed']} with errors; wrote {a.out}")
    if a.score:
        from ..data.catalog import find_root
        from .demo import format_test_scores, test_scores

        if not (find_root(a.data) / "test_labels.csv").exists():
            print(f"predict --score: {a.data} has no test_labels.csv (only a synthetic folder has): nothing to score against")
            return 0
        print(f"predict --score: {format_test_scores(test_scores(a.data, Path(a.out), a.weights))}")
    return 0


def _cmd_curve(a) -> int:
    from .curve import CurveConfig, main, refit_main, stage_overrides
    if a.refit_with:
        refit_main(a.out, a.refit_with)
        return 0
    if not a.data:
        raise SystemExit("curve: --data is required (the folder whose training studies are subset)")
    overrides = stage_overrides(a.set)
    main(a.data, a.test, a.work, a.out, CurveConfig(sizes=a.sizes, folds=a.folds, seed=a.seed, target=a.target,
                                                    workers=a.workers, overrides=overrides, fit_from=a.fit_from),
         fit_only=a.fit_only)
    return 0


def _cmd_scaling(a) -> int:
    from ..files import write_json, write_text
    from .scaling import report
    numbers, text = report(a.data, a.cache, tuple(a.sizes), a.members or None, a.svm_rows, a.n_jobs, a.workers)
    print(text)
    if a.out:
        write_text(Path(a.out) / "selector_scaling.md", text + "\n")
        write_json(Path(a.out) / "selector_scaling.json", numbers)
    return 0


def _cmd_backbones(a) -> int:
    from ..models.backbones import save_backbones
    from ..train.preset import read_preset
    names = a.names or sorted({c.backbone for c in read_preset(a.preset).values() if hasattr(c, "backbone")})
    for path in save_backbones(names, a.out):
        print(f"backbones: {path}")
    print(f"backbones: give backbone_checkpoint={a.out} (a config key of both models) on the offline machine")
    return 0


def _cmd_attribution(a) -> int:
    from .attribution import attribution, format_markdown
    result = attribution(a.data, a.run, a.out, a.cache, tuple(a.models) or None, a.n_boot,
                         **({} if a.max_studies is None else {"max_studies": a.max_studies}))
    print(format_markdown(result))
    print(f"attribution: {Path(a.out) / 'attribution.json'}, attribution.md, attribution.png")
    return 0


def _cmd_rehearsal(a) -> int:
    from .rehearsal import main
    return main(a.out, a.studies, a.size_scale, a.workers)


def _cmd_demo(a) -> int:
    from .demo import run_demo
    run_demo(a.data, a.run, a.weights, a.kernel, a.cache)
    return 0


def _cmd_score(a) -> int:
    from .scoring import format_table, local_score
    table = local_score(a.data, a.run)
    text = format_table(table)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    if a.reports:
        from .reports import write_reports
        paths = write_reports(a.data, a.run, a.reports, a.cache, table=table)
        print(f"score: {len(paths)} reports in {a.reports}/: " + ", ".join(p.name for p in paths))
        if a.attribution:
            from .attribution import attribution, format_markdown
            print(format_markdown(attribution(a.data, a.run, a.reports, a.cache or "cache")))
            print(f"score: attribution.json, attribution.md, attribution.png in {a.reports}/")
    return 0


def _cmd_show(a) -> int:
    from ..data.cache import StudyCache
    from ..data.catalog import CatalogError, load_studies
    from ..data.volumes import study_volumes
    from .plots import show_study
    from ..preprocess.pipeline import cache_version, load_stage_one, preprocess_study

    study = None
    for split in ("train", "test"):
        try:
            study = next((s for s in load_studies(a.data, split) if s.study_id == a.study), None)
        except CatalogError:  # a folder may hold only one split (a Kaggle test mount has no train.csv)
            continue
        if study is not None:
            break
    if study is None:
        raise ValueError(f"{a.data}: no study {a.study} in train or test")
    selector, sel_id, regions, cfg = load_stage_one(a.run)
    cache = StudyCache(a.cache, cache_version())
    entry = preprocess_study(study, selector, sel_id, regions, cfg, cache)
    out = show_study(study, study_volumes(study, cache), entry, a.out)
    print(f"show: {out}")
    return 0


def _cmd_bench(a) -> int:
    from .bench import run_bench
    text = "\n".join(run_bench(a.data, a.run, a.studies, a.weights, a.device))
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lumbar", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    from ..data.synth import SynthConfig
    s = sub.add_parser("synth", help="write a synthetic competition folder (options: SynthConfig's fields)")
    dataclass_options(s, SynthConfig)
    s.set_defaults(fn=_cmd_synth)

    r = sub.add_parser("rehearsal", help="every stage on a real-profile folder: seconds, peak RSS, projections")
    r.add_argument("--out", default="runs/rehearsal", help="folder for its data, run, cache and rehearsal.md")
    r.add_argument("--studies", type=int, default=40, help="real-profile training studies to rehearse on")
    r.add_argument("--size-scale", type=float, default=1.0, help="matrix sizes times this (1 = the real sizes)")
    r.add_argument("--workers", type=int, default=2, help="processes for synth, features and predict")
    r.set_defaults(fn=_cmd_rehearsal)

    sc = sub.add_parser("scaling", help="the slice selector's fit time at growing row counts, its exponent per "
                                        "member, and the stage projected to 1,975 studies")
    sc.add_argument("--data", required=True, help="a competition folder (a real-profile synthetic one)")
    sc.add_argument("--cache", default="cache", help="the per-study cache (features are reused)")
    sc.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000, 20000], help="row counts to time")
    sc.add_argument("--members", nargs="*", default=None, help="selector members to time (default: all)")
    sc.add_argument("--svm-rows", type=int, default=None, help="the SVM's row cap (default: SliceSelectConfig's; 0 = none)")
    sc.add_argument("--n-jobs", type=int, default=0, help="threads of the forest and XGBoost (0 = every core)")
    sc.add_argument("--workers", type=int, default=2, help="processes featurising the studies")
    sc.add_argument("--out", default=None, help="write selector_scaling.md and .json into this folder")
    sc.set_defaults(fn=_cmd_scaling)

    cu = sub.add_parser("curve", help="the learning curve: every stage on nested training subsets, scored on the same "
                                      "unseen test studies, fitted a + b n^-c and projected to 1,975 studies")
    cu.add_argument("--data", default=None, help="the folder whose training studies are subset (a real-profile "
                                                 "synthetic one; required but with --refit-with)")
    cu.add_argument("--test", default=None, help="the folder whose test studies score every size (default: --data)")
    cu.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200, 400], help="training studies per size")
    cu.add_argument("--folds", type=int, default=2, help="CV folds of every stage")
    cu.add_argument("--seed", type=int, default=0, help="the subsets' and the folds' seed")
    cu.add_argument("--target", type=int, default=1975, help="the n to project to")
    cu.add_argument("--workers", type=int, default=1, help="predict's input workers")
    cu.add_argument("--fit-from", type=int, default=0, help="fit only the sizes from this n on (below where the "
                                                           "models start to learn the score is flat)")
    cu.add_argument("--work", default="runs/curve", help="per size: data view, run, weights, submissions (resumed)")
    cu.add_argument("--out", default="bench/results/learning-curve", help="curve.json, results.md, curve.png")
    cu.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE",
                    help="a stage's config override (repeatable), e.g. multitask:epochs=3")
    cu.add_argument("--fit-only", action="store_true", help="refit and redraw from the sizes already predicted")
    cu.add_argument("--refit-with", default="", metavar="FILE", help="refit --out's curve.json with a run's measured "
                    "scores (JSON: n, folds, models: {model: {score, interval}}): refit.json, refit.md")
    cu.set_defaults(fn=_cmd_curve)

    bb = sub.add_parser("backbones", help="download the presets' pretrained backbones into a folder (needs "
                                          "internet), to carry to an offline machine")
    bb.add_argument("--out", required=True, help="the folder to fill (then backbone_checkpoint=FOLDER)")
    bb.add_argument("--preset", default="configs/gpu", help="the preset whose models' backbones to fetch")
    bb.add_argument("names", nargs="*", help="timm model names instead of the preset's")
    bb.set_defaults(fn=_cmd_backbones)

    v = sub.add_parser("validate", help="check a competition folder; exit 1 on any problem")
    v.add_argument("dir", help="the competition folder to check")
    v.set_defaults(fn=_cmd_validate)

    from ..cv import RunConfig
    t = sub.add_parser("train", help="train one model on every fold, writing OOF predictions")
    t.add_argument("--model", required=True, help="a stage (prior, slice_select, crops, superres, multitask, "
                                                  "sequence, ensemble) or all")
    t.add_argument("--data", default="data/synthetic", help="competition folder")
    # --run-dir: the same; torchrun's own parser mistakes a bare --run for its --run-path
    t.add_argument("--run", "--run-dir", dest="run", default="runs/default", help="run folder (resumed)")
    t.add_argument("--folds", type=int, default=RunConfig.n_folds, help="study-level CV folds")
    t.add_argument("--seed", type=int, default=RunConfig.seed, help="the folds' seed")
    t.add_argument("--config", default=None, help="a preset (configs/gpu/multitask.json) or any JSON of config values")
    t.add_argument("--device", default="", help="the device of a torch stage (cpu, cuda, auto), over the config's; "
                                                "ignored by stages without one")
    t.add_argument("--backbones", default="", help="a pretrained backbone file or folder (models/backbones.py) for "
                                                   "the models that take backbone_checkpoint; ignored by the others")
    t.add_argument("--retrain", action="store_true", help="train the stage even where an earlier run of the same "
                                                          "request finished it (by default it is reused)")
    t.add_argument("--options", action=_StageOptions, help="list every stage's key=value overrides, their defaults "
                                                           "and what each does, and exit")
    t.add_argument("overrides", nargs="*", help="config overrides, key=value (`train --options` lists them)")
    t.set_defaults(fn=_cmd_train)

    ps = sub.add_parser("preset", help="say which preset `make train` uses and check this machine can run it")
    ps.add_argument("dir", help="a preset folder: configs/tiny, configs/gpu or one of your own")
    ps.add_argument("--device", default="", help="the device override `make train DEVICE=...` passes")
    ps.set_defaults(fn=_cmd_preset)

    cf = sub.add_parser("configs", help="rewrite configs/tiny/ from the config dataclasses, complete configs/gpu/")
    cf.add_argument("--out", default="configs", help="the presets folder (tiny/ and gpu/ inside)")
    cf.set_defaults(fn=_cmd_configs)

    e = sub.add_parser("export", help="copy a run's inference artefacts to a weights folder with manifest.json")
    e.add_argument("--run", "--run-dir", dest="run", default="runs/default", help="the trained run")
    e.add_argument("--data", default="data/synthetic", help="its competition folder (the data fingerprint)")
    e.add_argument("--out", default="weights", help="the weights folder to write (a Kaggle dataset)")
    e.set_defaults(fn=_cmd_export)

    from ..infer.settings import PredictConfig
    pr = sub.add_parser("predict", help="submission.csv for a folder's test studies from a weights folder "
                                        "(options: PredictConfig's fields)")
    pr.add_argument("--data", default="data/synthetic", help="competition folder whose test studies to predict")
    pr.add_argument("--weights", default="weights", help="weights folder (make train / export)")
    pr.add_argument("--out", default="submission.csv", help="the submission to write (atomically, priors first)")
    pr.add_argument("--score", action="store_true", help="then score it on the folder's test_labels.csv (synthetic "
                    "folders): a larger test split than the demo's 20 studies, e.g. `synth --studies 8 --test-studies 100`")
    dataclass_options(pr, PredictConfig, skip=("fault",))
    pr.set_defaults(fn=_cmd_predict)

    dm = sub.add_parser("demo", help="train every stage (reusing what is built), export, build and run the kernel")
    dm.add_argument("--data", default="data/synthetic", help="the synthetic competition folder")
    dm.add_argument("--run", "--run-dir", dest="run", default="runs/default", help="run folder (stages reused)")
    dm.add_argument("--weights", default="weights", help="where the trained weights are exported")
    dm.add_argument("--kernel", default="kernel", help="where the notebook is built")
    dm.add_argument("--cache", default="cache", help="per-study cache folder")
    dm.set_defaults(fn=_cmd_demo)

    c = sub.add_parser("score", help="OOF score of every model of a run, per condition group")
    c.add_argument("--data", default="data/synthetic", help="competition folder (labels, oracle.csv)")
    c.add_argument("--run", default="runs/default", help="the run whose OOF predictions to score")
    c.add_argument("--out", default=None, help="also write the table (markdown) here")
    c.add_argument("--reports", default=None, help="write figures and the table into this folder")
    c.add_argument("--cache", default=None, help="per-study cache for the example figures")
    c.add_argument("--attribution", action="store_true", help="also the attribution report (reports/attribution.*): "
                                                              "each model on stage one's inputs and on the labels'")
    c.set_defaults(fn=_cmd_score)

    at = sub.add_parser("attribution", help="each model scored with stage one as shipped, with the labelled slices "
                                            "and with the labelled points: where the gap to the oracle is")
    at.add_argument("--data", default="data/synthetic", help="competition folder (labels, oracle.csv)")
    at.add_argument("--run", "--run-dir", dest="run", default="runs/default", help="the trained run")
    at.add_argument("--out", default="reports", help="folder for attribution.json, .md and .png")
    at.add_argument("--cache", default="cache", help="the per-study cache the run was trained with")
    at.add_argument("--models", nargs="*", default=[], help="models to attribute (default: every torch model of the run)")
    at.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of studies for the intervals")
    at.add_argument("--max-studies", type=int, default=None, help="held-out studies attributed at most (a seeded "
                    "draw; 0 = all; default attribution.MAX_STUDIES, 400): each costs a decode and four sets of inputs")
    at.set_defaults(fn=_cmd_attribution)

    sh = sub.add_parser("show", help="figure of a study's chosen slices, crop boxes, points and crops")
    sh.add_argument("--data", default="data/synthetic", help="competition folder")
    sh.add_argument("--study", type=int, required=True, help="the study id (train or test)")
    sh.add_argument("--out", required=True, help="the PNG to write")
    sh.add_argument("--run", default="runs/default", help="the run whose stage one chooses and crops")
    sh.add_argument("--cache", default="cache", help="per-study cache folder")
    sh.set_defaults(fn=_cmd_show)

    b = sub.add_parser("bench", help="decode vs I/O floor, preprocessing cold vs warm cache (ratios, one run)")
    b.add_argument("--data", default="data/synthetic", help="competition folder")
    b.add_argument("--run", default="runs/default", help="the trained run (stage one)")
    b.add_argument("--studies", type=int, default=10, help="studies to time")
    b.add_argument("--weights", default="weights", help="weights folder for the inference timings")
    b.add_argument("--device", default="cpu", help="cpu, or cuda (then fp32 and fp16 are both measured)")
    b.add_argument("--out", default=None, help="also write the table (markdown) here")
    b.set_defaults(fn=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Our errors name the file and the problem; a traceback adds nothing for the user.
        print(f"lumbar {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
