"""``hsm drill``: a failover drill on a SoftHSM cluster, with a report that proves (or not)
that nothing was lost.

:mod:`hsm.testing.drill` (the client, the cluster, the PKCS#11 edge) is imported when the
drill runs, not when ``hsm --help`` lists the command.
"""

from __future__ import annotations

import os

import click

from hsm.cli._common import CLIError, common_options, emit, settings

__all__ = ["drill"]


@click.command()
@common_options
@click.option("--members", type=click.IntRange(2, 16), default=3, show_default=True,
              help="Members of the harness the drill stands up (without --config).")
@click.option("--duration", type=click.FloatRange(min=1.0), default=20.0, show_default=True,
              help="Seconds of traffic.")
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Threads sending traffic.")
@click.option("--schedule", metavar="SPEC",
              help="Faults, e.g. 3s:hsm-b=device-error,8s:hsm-b=heal,10s:hsm-c=hang "
                   "(default: every fault kind, the primary lost last). A fault waits "
                   "until another member serves; faulting every member at once is refused.")
@click.option("--plot", "plot_path", metavar="FILE.png",
              help="Draw latency over time with the faults marked (needs matplotlib).")
@click.option("--seed", type=int, default=0, help="Seed of the traffic mix.")
@click.option("--mode", type=click.Choice(["balanced", "failover"]), default="balanced",
              show_default=True,
              help="Routing during the drill (balanced: every member carries traffic).")
@click.option("--deadline-ms", type=click.IntRange(min=1), default=250, show_default=True,
              help="Per-call deadline during the drill (a hang must outlive it).")
def drill(members: int, duration: float, threads: int, schedule: str | None,
          plot_path: str | None, seed: int, mode: str, deadline_ms: int) -> None:
    """Run mixed traffic while faults come and go; verify every result afterwards.

    On the harness cluster named by --config or $HSM_CONFIG (made by hsm harness up);
    with neither, on its own SoftHSM cluster in a temporary directory (./hsm.toml is not
    used: a drill breaks the members it runs on). Exit status 1 if any operation failed,
    any result mismatched or any member was not back at the end.
    """
    from hsm.testing.drill_report import require_matplotlib  # light: checked before work

    if plot_path:
        require_matplotlib()
    from hsm.testing.drill import plot, run_drill  # here: see the module docstring

    config = settings().config or os.environ.get("HSM_CONFIG") or None
    report = run_drill(config=config, members=members, duration=duration,
                       threads=threads, schedule=schedule, seed=seed, mode=mode,
                       deadline_ms=deadline_ms)
    if plot_path:
        plot(report, plot_path)

    def human() -> None:
        click.echo(f"drill: {len(report.members)} members, {report.threads} threads, "
                   f"{report.duration:g} s; schedule {', '.join(report.schedule)}")
        click.echo(f"  operations {report.ops}, failed {report.failed}, mismatched "
                   f"{report.mismatched}, failovers {report.failovers}")
        click.echo(f"  latency p50 {report.p50_ms:.2f} ms, p99 {report.p99_ms:.2f} ms, "
                   f"max {report.max_ms:.1f} ms")
        for fault in report.faults:
            elsewhere = fault["first_success_elsewhere_ms"]
            waited = (f" (postponed {fault['postponed_ms']} ms: members not back yet)"
                      if fault.get("postponed_ms") else "")
            click.echo(
                f"  {fault['at_s']:6.2f}s {fault['member']}={fault['fault']}{waited}: "
                f"next {2:g}s p50 {fault['p50_ms']} ms, p99 {fault['p99_ms']} ms, "
                f"max {fault['max_ms']} ms; first success elsewhere after {elsewhere} ms")
        for item in report.skipped:
            click.echo(f"  skipped {item}")
        for name in report.members:
            if name in report.not_back:
                click.echo(f"  {name}: NOT back at the final check ({report.not_back[name]})")
            elif name not in report.readmit_ms:
                click.echo(f"  {name}: never left service")
            elif report.readmit_ms[name] is None:
                click.echo(f"  {name}: NOT re-admitted")
            else:
                click.echo(f"  {name}: re-admitted {report.readmit_ms[name]} ms after its "
                           "last heal")
        click.echo(f"  {report.data_keys_checked} data keys unwrapped on every member "
                   f"({report.unverified} could not be checked); KCVs agree: "
                   f"{report.kcv_summary()}")
        if plot_path:
            click.echo(f"  plot: {plot_path}")
        click.echo("PASSED: nothing lost" if report.passed else "FAILED")
        for line in report.errors[:5]:
            click.echo(f"  error: {line}", err=True)

    emit(report.as_dict(), human)
    if not report.passed:
        raise CLIError(f"drill failed: {report.failed} failed, {report.mismatched} "
                       f"mismatched, {report.unverified} unverified; KCVs agree: "
                       f"{report.kcv_summary()}")
