"""`adagen <stage>`: one command per pipeline stage. Thin: parse, validate, record, call `adagen.stages`.

Examples (from the repository root):

    adagen prepare-data --params params/default.yaml
    adagen pretrain --params params/default.yaml --paradigm dit
    adagen sample --params params/default.yaml --paradigm dit --variant static
    adagen evaluate --params params/smoke.yaml --paradigm dit --variant static --dry-run
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click
import numpy as np

from adagen import stages
from adagen.allocator import keep_freed_memory
from adagen.config import ParamsError, Paths, load_params, params_hash
from adagen.generate import SELECTIONS
from adagen.generators import paradigm_of
from adagen.io import DownloadError

params_option = click.option(
    "--params", "params_path", required=True, metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
    help="Params set (params/*.yaml); its file name names the output folders.",
)
dry_run_option = click.option("--dry-run", is_flag=True, help="Validate the params and print the plan; do nothing.")
# A setting of the params set: a paradigm's name (maskgit, var, dit, sit), or the name plus a tag (var-d16);
# checked against the set's `paradigms` once the params are read.
paradigm_option = click.option("--paradigm", required=True, metavar="SETTING",
                               help="Generator setting of the params set (its `paradigms` list), e.g. dit, var-d16.")
variant_option = click.option("--variant", default="static", show_default=True, type=click.Choice(stages.VARIANTS),
                              help="Sampling variant.")


def _run_stage(stage: str, params_path: Path, dry_run: bool, outputs: Callable[[Paths], list[Path]],
               work: Callable, paradigm: str | None = None, variant: str | None = None) -> None:
    """Validate, then run `work(params, paths, run)` inside an MLflow run; errors become clear messages."""
    try:
        params = load_params(params_path)
    except ParamsError as error:
        raise click.ClickException(str(error)) from error
    paths = Paths.for_params_file(params_path)
    if paradigm is not None and paradigm not in params["paradigms"]:
        raise click.ClickException(f"{params_path}: paradigm {paradigm!r} is not in paradigms {params['paradigms']}")
    if stage == "train-tokenizer" and not paradigm_of(paradigm).uses_tokenizer:
        raise click.ClickException(f"{paradigm!r} has no VQ tokenizer (only maskgit and var settings do)")
    if dry_run:
        click.echo(f"[dry run] {stage} of params set {paths.set_name!r} would write:")
        for path in outputs(paths):
            click.echo(f"  {path}")
        return
    from adagen.tracking import stage_run  # MLflow is imported only by stages that actually run

    try:
        with stage_run(set_name=paths.set_name, stage=stage, params=params, params_hash=params_hash(params),
                       paradigm=paradigm, variant=variant, inputs={"params": params_path}) as run:
            work(params, paths, run)
    except (stages.MissingInput, ValueError, DownloadError) as error:
        raise click.ClickException(str(error)) from error


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="adagen")
def main() -> None:
    """AdaGen pipeline stages. Snakemake (`snakemake --cores all all`) and DVC (`dvc repro`) call these."""


@main.command("prepare-data")
@params_option
@dry_run_option
def prepare_data(params_path: Path, dry_run: bool) -> None:
    """Export the dataset (bundled digits or your own) with a fixed train/val split and a content hash."""
    _run_stage("prepare-data", params_path, dry_run, lambda p: [p.dataset, p.dataset_info], stages.prepare_data)


@main.command("train-evaluator")
@params_option
@dry_run_option
def train_evaluator(params_path: Path, dry_run: bool) -> None:
    """Train the small classifier whose features the metrics use (embedded default)."""
    _run_stage("train-evaluator", params_path, dry_run, lambda p: [p.evaluator, p.evaluator_info],
               stages.train_evaluator)


@main.command("refstats")
@params_option
@dry_run_option
def refstats(params_path: Path, dry_run: bool) -> None:
    """Cache the reference features of the val split; record the real-vs-real and noise sanity FIDs."""
    _run_stage("refstats", params_path, dry_run, lambda p: [p.refstats_dir], stages.refstats)


@main.command("train-tokenizer")
@params_option
@click.option("--paradigm", required=True, metavar="SETTING",
              help="Setting of a token paradigm (maskgit, var) whose VQ tokenizer to train.")
@dry_run_option
def train_tokenizer(params_path: Path, paradigm: str, dry_run: bool) -> None:
    """Train the VQ tokenizer of a token paradigm (MaskGIT, VAR) on the train split (resumes if interrupted)."""
    _run_stage("train-tokenizer", params_path, dry_run, lambda p: [p.tokenizer(paradigm), p.tokenizer_info(paradigm)],
               lambda params, paths, run: stages.train_tokenizer(params, paths, run, paradigm), paradigm=paradigm)


@main.command("pretrain")
@params_option
@paradigm_option
@dry_run_option
def pretrain(params_path: Path, paradigm: str, dry_run: bool) -> None:
    """Train the embedded-size generator of a paradigm on the train split (resumes if interrupted)."""
    _run_stage("pretrain", params_path, dry_run, lambda p: [p.generator(paradigm), p.generator_info(paradigm)],
               lambda params, paths, run: stages.pretrain(params, paths, run, paradigm), paradigm=paradigm)


@main.command("get-generator")
@params_option
@paradigm_option
@dry_run_option
def get_generator(params_path: Path, paradigm: str, dry_run: bool) -> None:
    """Fetch a downloaded generator's official weights (and its tokenizer's or VAE's), verify and load them."""
    def outputs(paths: Paths) -> list[Path]:
        token_files = [paths.tokenizer(paradigm), paths.tokenizer_info(paradigm)] if paradigm_of(paradigm).uses_tokenizer else []
        return [paths.generator(paradigm), paths.generator_info(paradigm), *token_files]

    _run_stage("get-generator", params_path, dry_run, outputs,
               lambda params, paths, run: stages.get_generator(params, paths, run, paradigm), paradigm=paradigm)


@main.command("get-policy")
@params_option
@paradigm_option
@dry_run_option
def get_policy(params_path: Path, paradigm: str, dry_run: bool) -> None:
    """Fetch the AdaGen release's policy of a setting (the `released` variant samples with it)."""
    _run_stage("get-policy", params_path, dry_run,
               lambda p: [p.policy(paradigm, stages.RELEASED), p.policy_info(paradigm, stages.RELEASED)],
               lambda params, paths, run: stages.get_policy(params, paths, run, paradigm), paradigm=paradigm,
               variant=stages.RELEASED)


@main.command("train-fidelity-classifier")
@params_option
@dry_run_option
def train_fidelity_classifier(params_path: Path, dry_run: bool) -> None:
    """Train the fidelity score's frozen classifier (adagen.fidelity.classifier)."""
    _run_stage("train-fidelity-classifier", params_path, dry_run,
               lambda p: [p.fidelity_classifier, p.fidelity_classifier_info], stages.train_fidelity_classifier)


@main.command("tradeoff")
@params_option
@paradigm_option
@dry_run_option
def tradeoff(params_path: Path, paradigm: str, dry_run: bool) -> None:
    """The fidelity-diversity sweep: the adaptive policy blended with the fidelity policy at each lambda."""
    _run_stage("tradeoff", params_path, dry_run, lambda p: [p.tradeoff(paradigm), p.tradeoff_plot(paradigm)],
               lambda params, paths, run: stages.tradeoff(params, paths, run, paradigm), paradigm=paradigm)


@main.command("refine")
@params_option
@paradigm_option
@dry_run_option
def refine(params_path: Path, paradigm: str, dry_run: bool) -> None:
    """Inference-time refinement: best-of-N and value-guided lookahead beside the plain adaptive policy."""
    _run_stage("refine", params_path, dry_run, lambda p: [p.refinement(paradigm), p.refinement_grid(paradigm)],
               lambda params, paths, run: stages.refine(params, paths, run, paradigm), paradigm=paradigm)


@main.command("tune-static")
@params_option
@paradigm_option
@dry_run_option
def tune_static(params_path: Path, paradigm: str, dry_run: bool) -> None:
    """The tuned-static baseline: grid search over the sampling settings, judged against the train split."""
    _run_stage("tune-static", params_path, dry_run, lambda p: [p.tuned_static(paradigm)],
               lambda params, paths, run: stages.tune_static(params, paths, run, paradigm), paradigm=paradigm,
               variant="tuned-static")


@main.command("train-reward-backbone")
@params_option
@dry_run_option
def train_reward_backbone(params_path: Path, dry_run: bool) -> None:
    """Train the discriminator's frozen feature network (a tiny ViT classifier) on the train split."""
    _run_stage("train-reward-backbone", params_path, dry_run, lambda p: [p.reward_backbone, p.reward_backbone_info],
               stages.train_reward_backbone)


def train_job(params_path: Path, paradigm: str, variant: str) -> None:
    """The work of `adagen train`, as each task of the submitit job runs it (a module-level function: picklable).
    With several tasks, they form a torch.distributed group; rank 0 tracks the run and writes the outputs."""
    from adagen import distributed

    keep_freed_memory()  # the job's own process (submitit's), which did not start through `run`
    if launched_tasks() > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        distributed.init_from_environment()
    try:
        if distributed.rank_and_size()[0] > 0:
            from adagen.tracking import UntrackedRun

            stages.train_policy(load_params(params_path), Paths.for_params_file(params_path), UntrackedRun(),
                                paradigm, variant)
            return
        _run_stage("train", params_path, False,
                   lambda p: [p.policy(paradigm, variant), p.policy_info(paradigm, variant)],
                   lambda params, paths, run: stages.train_policy(params, paths, run, paradigm, variant),
                   paradigm=paradigm, variant=variant)
    finally:
        if distributed.rank_and_size()[1] > 1:
            import torch.distributed

            torch.distributed.destroy_process_group()


def launched_tasks() -> int:
    """Tasks of the submitit job this process belongs to (1 outside one)."""
    import submitit

    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job (executor debug)
        return 1


@main.command("train")
@params_option
@paradigm_option
@click.option("--variant", default="adaptive", type=click.Choice(stages.POLICY_VARIANTS),
              help="adaptive: the AdaGen policy; learned-static: the same training with the state zeroed; "
                   "fixed-reward: against the frozen classifier's confidence instead of the discriminator; "
                   "fidelity: the adversarial reward plus the fidelity classifier's log-probability (adagen.fidelity).")
@dry_run_option
def train(params_path: Path, paradigm: str, variant: str, dry_run: bool) -> None:
    """AdaGen: train the policy with PPO against a discriminator trained jointly (resumes if interrupted).
    Runs as a submitit job (params `launch`: local process, in-process debug, or SLURM) and waits for it."""
    if dry_run:
        _run_stage("train", params_path, True,
                   lambda p: [p.policy(paradigm, variant), p.policy_info(paradigm, variant)], None,
                   paradigm=paradigm, variant=variant)
        return
    try:
        params = load_params(params_path)
    except ParamsError as error:
        raise click.ClickException(str(error)) from error
    paths = Paths.for_params_file(params_path)
    if paradigm not in params["paradigms"]:
        raise click.ClickException(f"{params_path}: paradigm {paradigm!r} is not in paradigms {params['paradigms']}")
    from adagen.launch import JobFailed, run_job

    try:
        run_job(train_job, params_path, paradigm, variant, launch=params["launch"],
                folder=paths.submitit_dir / f"train-{paradigm}-{variant}", name=f"adagen-train-{paradigm}-{variant}")
    except JobFailed as error:
        raise click.ClickException(str(error)) from error


@main.command("sample")
@params_option
@paradigm_option
@variant_option
@dry_run_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write these samples to this npz (images uint8 NCHW, labels, actions) instead of the stage's.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also a PNG grid.")
@click.option("--png-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also one PNG per image in this folder.")
@click.option("--count", type=int, default=None, help="Number of class-balanced samples [default: 100].")
@click.option("--labels", "labels_text", default=None, metavar="L1,L2,...", help="Class labels instead of --count.")
@click.option("--seed", type=int, default=0, help="Sample i uses noise seed seed + i, whatever the batch size.")
@click.option("--batch-size", type=int, default=64)
@click.option("--steps", type=int, default=None, help="Generator evaluations of a static variant (MaskGIT, DiT, SiT).")
@click.option("--best-of", type=int, default=1,
              help="Refinement: N candidates per sample, one kept by the trained discriminator (N x compute).")
@click.option("--selection", type=click.Choice(SELECTIONS), default="resample", show_default=True,
              help="Best-of-N: resample the candidates by the discriminator's density ratio, or keep its favourite.")
@click.option("--lookahead", type=int, default=1,
              help="Refinement (MaskGIT, VAR): K candidate next states per step, the critic's favourite continued.")
@click.option("--lambda", "lam", type=float, default=0.0,
              help="Fidelity-diversity knob in [0, 1]: the adaptive policy blended with the fidelity policy.")
def sample(params_path: Path, paradigm: str, variant: str, dry_run: bool, out: Path | None, grid: Path | None,
           png_dir: Path | None, count: int | None, labels_text: str | None, seed: int, batch_size: int,
           steps: int | None, best_of: int, selection: str, lookahead: int, lam: float) -> None:
    """Sample with a variant's schedule. Without --out/--grid/--png-dir: the pipeline stage (class-balanced
    samples for every evaluation seed, uint8 npz and grid under results/). With them: the images you ask
    for, from the artifacts of a finished pipeline."""
    if out is None and grid is None and png_dir is None:
        if count is not None or labels_text is not None or steps is not None or best_of != 1 or lookahead != 1 or lam != 0:
            raise click.UsageError("--count, --labels, --steps, --best-of, --lookahead and --lambda need --out, --grid "
                                   "or --png-dir")
        _run_stage("sample", params_path, dry_run,
                   lambda p: [p.samples(paradigm, variant), p.grid(paradigm, variant)],
                   lambda params, paths, run: stages.sample(params, paths, run, paradigm, variant),
                   paradigm=paradigm, variant=variant)
        return
    from adagen.generate import generate, save_png_folder
    from adagen.io import save_npz
    from adagen.sampling import save_grid

    try:
        labels = [int(label) for label in labels_text.split(",")] if labels_text else None
    except ValueError as error:
        raise click.BadParameter(f"not a comma-separated list of integers: {labels_text!r}",
                                 param_hint="--labels") from error
    if labels is None and count is None:
        count = 100
    try:
        result = generate(params_path, paradigm, variant, count=count, labels=labels, seed=seed,
                          batch_size=batch_size, steps=steps, best_of=best_of, selection=selection,
                          lookahead=lookahead, lam=lam, progress=True)
    except (ParamsError, stages.MissingInput, ValueError) as error:
        raise click.ClickException(str(error)) from error
    images, label_array = result.images.numpy(), result.labels.numpy()
    if out is not None:
        save_npz(out, images=images, labels=label_array, seeds=seed + np.arange(len(label_array)),
                 nfe=np.int64(result.nfe), forwards=np.int64(result.forwards), candidates=np.int64(best_of),
                 discriminator_calls=np.int64(result.discriminator_calls), critic_calls=np.int64(result.critic_calls),
                 **{f"action_{name}": values.numpy() for name, values in result.actions.items()})
        click.echo(f"{len(images)} samples -> {out}")
    if grid is not None:
        save_grid(grid, images, label_array)
        click.echo(f"grid -> {grid}")
    if png_dir is not None:
        save_png_folder(png_dir, result.images, result.labels)
        click.echo(f"{len(images)} PNG files -> {png_dir}")
    extra = f", best of {best_of}: {result.discriminator_calls} discriminator calls" if best_of > 1 else ""
    extra += f", lookahead {lookahead}: {result.critic_calls} critic calls" if lookahead > 1 else ""
    click.echo(f"{paradigm} {variant}: {result.nfe} NFE ({result.forwards} network forwards){extra} per sample")


@main.command("evaluate")
@params_option
@paradigm_option
@variant_option
@dry_run_option
def evaluate(params_path: Path, paradigm: str, variant: str, dry_run: bool) -> None:
    """FID, IS, KID and precision/recall of a variant's samples against the val split (torch-fidelity)."""
    _run_stage("evaluate", params_path, dry_run, lambda p: [p.metrics(paradigm, variant)],
               lambda params, paths, run: stages.evaluate(params, paths, run, paradigm, variant),
               paradigm=paradigm, variant=variant)


@main.command("report")
@params_option
@dry_run_option
def report(params_path: Path, dry_run: bool) -> None:
    """summary.csv and summary.md of every paradigm and variant, with sanity figures and stage times."""

    def work(params, paths, run):
        stages.report(params, paths, run)
        click.echo(paths.summary_md.read_text())

    _run_stage("report", params_path, dry_run, lambda p: [p.summary_csv, p.summary_md], work)


@main.command("info")
def info() -> None:
    """Parameter counts of the paper's full-size networks (built on the meta device: no memory, no weights)."""
    from adagen.generators import full_size_parameter_counts

    click.echo(f"{'paradigm':<9} {'setting':<25} {'parameters':>15}")
    for (paradigm, setting), count in full_size_parameter_counts().items():
        click.echo(f"{paradigm:<9} {setting:<25} {count:>15,d}  ({count / 1e6:.1f}M)")


@main.command("fetch")
@click.argument("names", nargs=-1, metavar="ASSET...")
@click.option("--to", "folder", default="assets", type=click.Path(file_okay=False, path_type=Path),
              help="Folder the files go to.")
@click.option("--mirror", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Folder holding the assets' files under their registry names (offline clusters); used first.")
@click.option("--local", "local_path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A local file for the one asset named (replaces its URL).")
@click.option("--list", "list_only", is_flag=True, help="List the registry and exit.")
def fetch(names: tuple[str, ...], folder: Path, mirror: Path | None, local_path: Path | None, list_only: bool) -> None:
    """Download (resumably, verified) or copy full-scale assets: generators, VAEs, backbones, released policies."""
    from adagen.assets import fetch as fetch_asset, load_registry
    from adagen.io import DownloadError

    registry = load_registry()
    if list_only or not names:
        for asset in registry.values():
            click.echo(f"{asset.name:<24} {asset.license:<14} {asset.filename}")
        return
    unknown = sorted(set(names) - set(registry))
    if unknown:
        raise click.ClickException(f"unknown asset(s) {unknown}; known: {sorted(registry)}")
    if local_path is not None and len(names) != 1:
        raise click.ClickException("--local names one file: give exactly one asset with it")
    for name in names:
        try:
            path = fetch_asset(registry[name], folder, mirror=mirror, local=local_path, say=click.echo)
        except DownloadError as error:
            raise click.ClickException(str(error)) from error
        click.echo(f"{name}: {path}")


@main.command("validate")
@params_option
def validate(params_path: Path) -> None:
    """Check a params file against the schema and the cross-key rules."""
    try:
        load_params(params_path)
    except ParamsError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{params_path}: valid")


def run() -> None:
    """The `adagen` command: the stages in a process whose allocator keeps freed memory (adagen.allocator)."""
    keep_freed_memory()
    main()


if __name__ == "__main__":
    run()
