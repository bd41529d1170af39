"""`cortexctl repair apt|permissions|services` and `cortexctl doctor --fix`.

Every fix is a plan (a dry run) unless `--yes` is given; `--dry-run` is
accepted and is the default. `doctor --fix` runs the checks, plans the fix
of each failing one, asks on a terminal, and applies with `--yes`, then
re-runs the checks and exits with their doctor code. `repair list` shows the
fixes and `repair fix FIX_ID` plans (and with `--yes` applies) any one of them.

Exit codes: 0 planned, or applied and verified; 1 a fix failed or the
daemon refused; 3 the daemon cannot be reached.
"""

from __future__ import annotations

from cortexctl.commands.confirm import ask
from cortexctl.commands.monitor import run_checks
from cortexd.protocol import CortexError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from cortexctl.client import Client
    from cortexctl.output import Output

EXIT_OK = 0
EXIT_FAILED = 1
APPLY_WAIT = 7600.0
PLAN_WAIT = 140.0
PROBLEMS = ("WARN", "FAIL")


def _step_text(step: dict[str, Any]) -> str:
    if step["kind"] == "unit":
        return f"{step['action']} unit {step['unit']}"
    if step["kind"] == "file":
        return f"{step['action']} {step['path']}"
    return f"run: {' '.join(step.get('command', []))}"


def _show_plan(out: Output, plan: dict[str, Any], safety: str) -> None:
    target = f" [{plan['target']}]" if plan.get("target") else ""
    out.line(f"{plan['fix_id']}{target} ({safety}): {plan['summary']}")
    for step in plan["steps"]:
        out.line(f"  - {_step_text(step)}")
    for note in plan["notes"]:
        out.line(f"  note: {note}")


def _show_outcome(out: Output, outcome: dict[str, Any]) -> None:
    mark = out.paint("ok", "32") if outcome["ok"] else out.paint("FAILED", "31")
    out.line(f"{outcome['fix_id']}: {mark} - {outcome['message']}")
    for step in outcome["steps"]:
        if not step["ok"]:
            detail = step["error"] or step["stderr"] or f"exit {step['returncode']}"
            out.line(f"  - {_step_text(step)}: {detail}")


def run_fixes(
    client: Client, out: Output, wanted: list[tuple[str, str | None]], yes: bool
) -> tuple[int, list[dict[str, Any]]]:
    """Plan each (fix_id, target); apply them when `yes` (or the operator agrees)."""
    fixes = {f["id"]: f for f in client.call("fixes.list")["fixes"]}
    plans: list[dict[str, Any]] = []
    unplanned: list[dict[str, Any]] = []
    for fix_id, target in wanted:
        params: dict[str, Any] = {"fix_id": fix_id}
        if target:
            params["target"] = target
        try:
            plan = client.call("fixes.plan", params, timeout=PLAN_WAIT)["plan"]
        except CortexError as exc:
            # One fix that cannot be planned here (no systemd, say) must not stop the others.
            unplanned.append({"plan": None, "fix_id": fix_id, "error": exc.to_error()})
            out.say(f"{fix_id}: {out.paint('cannot plan', '31')} - {exc.message}")
            continue
        plans.append(plan)
        if not out.as_json:
            _show_plan(out, plan, fixes.get(fix_id, {}).get("safety", "?"))
    todo = [p for p in plans if p["steps"]]
    code = EXIT_FAILED if unplanned else EXIT_OK
    if not todo:
        out.say("nothing to fix")
        return code, [*unplanned, *({"plan": p} for p in plans)]
    if not yes and not out.as_json:
        yes = ask(f"apply {len(todo)} fix(es)?")
        if not yes:
            out.line("dry run: nothing changed (pass --yes to apply)")
    if not yes:
        return code, [*unplanned, *({"plan": p} for p in plans)]
    done: list[dict[str, Any]] = list(unplanned)
    for plan in todo:
        params = {"fix_id": plan["fix_id"], "confirm": True}
        if plan["target"]:
            params["target"] = plan["target"]
        try:
            with out.progress(f"applying {plan['fix_id']}"):
                result = client.call("fixes.apply", params, timeout=APPLY_WAIT)
        except CortexError as exc:
            code = EXIT_FAILED
            done.append({"plan": plan, "error": exc.to_error()})
            out.say(f"{plan['fix_id']}: {out.paint('REFUSED', '31')} - {exc.message}")
            continue
        done.append(result)
        if not result["outcome"]["ok"] or result["outcome"]["verified"] is False:
            code = EXIT_FAILED
        if not out.as_json:
            _show_outcome(out, result["outcome"])
    return code, done


def _doctor_code(results: list[dict[str, Any]]) -> int:
    statuses = {r["status"] for r in results}
    for code, status in ((3, "ERROR"), (2, "FAIL"), (1, "WARN")):
        if status in statuses:
            return code
    return 0


def doctor_fix(client: Client, args: Any, out: Output, report: Any) -> int:
    """`doctor --fix`: run the checks, plan the fixes of failing ones, maybe apply, re-check.

    Returns the doctor exit code of the last check run (see `cortexctl doctor`).
    """
    params: dict[str, Any] = {}
    if args.check:
        params["ids"] = args.check
    if args.category:
        params["category"] = args.category
    first = run_checks(client, args, out, params)
    failing = [r for r in first["results"] if r["status"] in PROBLEMS]
    wanted: list[tuple[str, str | None]] = list(
        dict.fromkeys((str(r["fix_id"]), None) for r in failing if r["fix_id"])
    )
    for r in failing:
        out.say(f"{r['status']:<5} {r['check_id']}: {r['message']} ({r['fix_id'] or 'no fix'})")
    out.say(f"{len(wanted)} fix(es) planned:" if wanted else "no fixes to plan")
    code, done = run_fixes(client, out, wanted, args.yes and not args.dry_run_only)
    applied = any("outcome" in d for d in done)
    if not out.as_json:
        if applied:
            out.line("re-checking:")
            return int(report(client, args, out))
        return max(code, _doctor_code(first["results"]))
    after = run_checks(client, args, out, params) if applied else first
    exit_code = _doctor_code(after["results"])
    out.json({"checks": first, "fixes": done, "after": after, "exit_code": exit_code})
    return exit_code


def _apt(client: Client, args: Any, out: Output) -> int:
    wanted: list[tuple[str, str | None]] = [("clear_apt_locks", None)]
    if not args.locks:
        wanted += [("dpkg_configure", None), ("apt_fix_broken", None)]
        if args.lists:
            wanted.append(("apt_rebuild_lists", None))
    return _finish(client, args, out, wanted)


def _permissions(client: Client, args: Any, out: Output) -> int:
    wanted: list[tuple[str, str | None]] = []
    if args.cortex or not args.user:
        wanted += [("remove_world_write", None), ("reset_cortex_permissions", None)]
    if args.user:
        wanted.append(("user_permissions", args.user))
    return _finish(client, args, out, wanted)


def _services(client: Client, args: Any, out: Output) -> int:
    return _finish(client, args, out, [("restart_unit", args.service)])


def _fix(client: Client, args: Any, out: Output) -> int:
    return _finish(client, args, out, [(args.fix_id, args.target)])


def _list(client: Client, args: Any, out: Output) -> int:
    out.result(client.call("fixes.list"), lambda result: _show_fixes(out, result))
    return EXIT_OK


def _show_fixes(out: Output, result: dict[str, Any]) -> None:
    width = max((len(f["id"]) for f in result["fixes"]), default=8)
    for fix in result["fixes"]:
        target = " TARGET" if fix["targeted"] else ""
        checks = ", ".join(fix["checks"]) or "-"
        out.line(f"{fix['id']:<{width}}  {fix['safety']:<7}  {fix['description']}{target}")
        out.line(f"{'':<{width}}  answers: {checks}")
    auto = "on" if result["auto_fix_safe"] else "off"
    out.line(f"safe fixes applied automatically when their check fails: {auto}")


def _finish(client: Client, args: Any, out: Output, wanted: list[tuple[str, str | None]]) -> int:
    code, done = run_fixes(client, out, wanted, args.yes and not args.dry_run_only)
    # The plans and outcomes were printed as they came; the JSON has them all.
    out.result({"fixes": done}, lambda _: None)
    return code


def _apply_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", "-y", action="store_true", help="apply the planned fixes")
    parser.add_argument(
        "--dry-run",
        dest="dry_run_only",
        action="store_true",
        help="only show the plan (the default without --yes)",
    )


def _add_doctor_fix(sub: Any) -> None:
    # `doctor` belongs to the monitor commands; --fix extends it from here so
    # that module stays free of repair logic.
    doctor = sub.choices.get("doctor")
    if doctor is None:
        return
    doctor.add_argument(
        "--fix", action="store_true", help="plan fixes for failing checks (apply with --yes)"
    )
    _apply_flags(doctor)
    report = doctor.get_default("run")

    def run(client: Client, args: Any, out: Output) -> int:
        if args.fix:
            return doctor_fix(client, args, out, report)
        return int(report(client, args, out))

    doctor.set_defaults(run=run)


def register(sub: Any) -> None:
    """Add `repair` (and `doctor --fix`) to the top-level subparsers."""
    from cortexctl.parsing import actions, command

    _add_doctor_fix(sub)
    repair = command(
        sub,
        "repair",
        help="plan or apply fixes (apt, permissions, services, any fix by id)",
        description="Plan fixes (a dry run by default); apply them with --yes (needs admin).",
        notes="exit codes: 0 planned or applied, 1 a fix failed or was refused, 3 cannot connect",
        examples=[
            "cortexctl repair apt --locks",
            "sudo cortexctl repair apt --yes",
            "cortexctl repair permissions --cortex",
            "sudo cortexctl repair services --service nginx --yes",
            "cortexctl repair list",
            "sudo cortexctl repair fix vacuum_journal --target /var --yes",
        ],
    )
    kinds = actions(repair, "repair_kind", "KIND")
    apt = command(
        kinds,
        "apt",
        help="stale locks, interrupted dpkg, broken dependencies",
        examples=["cortexctl repair apt", "sudo cortexctl repair apt --locks --yes"],
    )
    apt.add_argument("--locks", action="store_true", help="only clear stale lock files")
    apt.add_argument("--lists", action="store_true", help="also rebuild the package lists")
    _apply_flags(apt)
    apt.set_defaults(run=_apt)
    perms = command(
        kinds,
        "permissions",
        help="ownership and modes of Cortex files",
        examples=[
            "cortexctl repair permissions --cortex",
            "sudo cortexctl repair permissions --user alice --yes",
        ],
    )
    perms.add_argument("--cortex", action="store_true", help="the Cortex directories (default)")
    perms.add_argument("--user", metavar="NAME", help="a user's home and Cortex directories")
    _apply_flags(perms)
    perms.set_defaults(run=_permissions)
    services = command(
        kinds,
        "services",
        help="restart failed units",
        examples=[
            "cortexctl repair services --restart-failed",
            "sudo cortexctl repair services --service nginx --yes",
        ],
    )
    services.add_argument(
        "--restart-failed", action="store_true", help="restart every failed unit (the default)"
    )
    services.add_argument("--service", metavar="NAME", help="only this unit")
    _apply_flags(services)
    services.set_defaults(run=_services)
    fix = command(
        kinds,
        "fix",
        help="plan (and with --yes apply) one fix by its id",
        examples=[
            "cortexctl repair fix clear_apt_locks",
            "sudo cortexctl repair fix restart_unit --target nginx.service --yes",
        ],
    )
    fix.add_argument("fix_id", metavar="FIX_ID", help="the fix (see `cortexctl repair list`)")
    fix.add_argument("--target", metavar="T", help="a unit, mountpoint or user, for targeted fixes")
    _apply_flags(fix)
    fix.set_defaults(run=_fix)
    command(
        kinds,
        "list",
        help="the fixes, their safety and the checks they answer",
        examples=["cortexctl repair list", "cortexctl repair list --json"],
    ).set_defaults(run=_list)
