"""`branet`: serve, manage users, and analyse an image against a running server."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROLE_CHOICES = ["classifier-us", "classifier-dm", "localiser-us", "localiser-dm"]  # server.model_registry.ROLES


def _serve(args: argparse.Namespace) -> int:
    from server.memory import keep_large_buffers_off_the_heap
    keep_large_buffers_off_the_heap()  # before the models allocate anything
    from models.manifest import WeightsError  # torch: imported by the commands that need it only
    from server.engine import Engine
    from server.settings import get_settings
    from server.firebase import FirebaseConfigError, check_settings
    settings = get_settings()
    try:
        check_settings(settings)  # BRANET_AUTH / BRANET_STORE settings that cannot work
    except FirebaseConfigError as e:
        print(f"branet: cannot start: {e}", file=sys.stderr)
        return 1
    engine = Engine(settings)
    try:
        engine.load()  # fail before binding the port, naming the file
    except WeightsError as e:
        print(f"branet: cannot start: {e}", file=sys.stderr)
        return 1
    import uvicorn

    from server.app import create_app
    uvicorn.run(create_app(settings, engine, host=args.host), host=args.host, port=args.port, log_level=args.log_level)
    return 0


class PasswordError(Exception):
    pass


def _read_password(name: str, from_stdin: bool) -> str:
    """One line of stdin (--password-stdin), or typed twice at a terminal; the rules checked."""
    import getpass

    from server import passwords
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("the same again: ") != password:
            raise PasswordError("the two passwords differ")
    else:
        raise PasswordError("no terminal to ask for a password: pass --password-stdin (one line on stdin) "
                            "or --no-password (a token-only user)")
    try:
        passwords.check_rules(password)
    except ValueError as e:
        raise PasswordError(str(e)) from None
    return password


def _users_add(args: argparse.Namespace) -> int:
    from server.passwords import hash_password
    from server.settings import get_settings
    from server.store import Store
    try:
        password = None if args.no_password else _read_password(args.name, args.password_stdin)
    except PasswordError as e:
        print(f"branet: {e}", file=sys.stderr)
        return 2
    store = Store(get_settings().home)
    try:
        _, token = store.add_user(args.name, admin=args.admin,
                                  password_hash=None if password is None else hash_password(password))
    except ValueError as e:
        print(f"branet: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(token)  # alone on stdout, for scripts: TOKEN=$(branet users add alice --no-password)
    return 0


def _users_passwd(args: argparse.Namespace) -> int:
    from server.passwords import hash_password
    from server.settings import get_settings
    from server.store import Store
    try:
        password = _read_password(args.name, args.password_stdin)
    except PasswordError as e:
        print(f"branet: {e}", file=sys.stderr)
        return 2
    store = Store(get_settings().home)
    try:
        changed = store.set_password(args.name, hash_password(password))
    finally:
        store.close()
    if not changed:
        print(f"branet: no user {args.name!r}", file=sys.stderr)
        return 1
    print(f"branet: password of {args.name!r} set; its sign-in sessions are ended", file=sys.stderr)
    return 0


def _users_list(args: argparse.Namespace) -> int:
    from server.settings import get_settings
    from server.store import Store
    store = Store(get_settings().home)
    try:
        users = store.list_users()
    finally:
        store.close()
    rows = [("name", "role", "created", "password", "tokens", "sessions")]
    rows += [(u["name"], u["role"], u["created"], "yes" if u["has_password"] else "no", str(u["tokens"]),
              str(u["sessions"])) for u in users]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _users_revoke(args: argparse.Namespace, new_token: bool = False) -> int:
    from server.settings import get_settings
    from server.store import Store
    store = Store(get_settings().home)
    try:
        result = store.revoke(args.name, new_token=new_token)
    finally:
        store.close()
    if result is None:
        print(f"branet: no user {args.name!r}", file=sys.stderr)
        return 1
    tokens, sessions, token = result
    print(f"branet: revoked {tokens} API token(s) and {sessions} session(s) of {args.name!r}"
          + ("; its new API token is on stdout" if token else ""), file=sys.stderr)
    if token:
        print(token)  # alone on stdout, for scripts: TOKEN=$(branet users rotate alice)
    return 0


def _users_admin(args: argparse.Namespace, admin: bool) -> int:
    """Firebase sign-in: set or clear a user's `admin` custom claim (by e-mail)."""
    from server.firebase import FirebaseConfigError, check_settings, set_admin
    from server.settings import get_settings
    settings = get_settings()
    if settings.auth != "firebase":
        print("branet: grant-admin and revoke-admin are for BRANET_AUTH=firebase; local users get admin rights "
              "with `branet users add NAME --admin`", file=sys.stderr)
        return 2
    try:
        check_settings(settings)
    except FirebaseConfigError as e:
        print(f"branet: {e}", file=sys.stderr)
        return 2
    from firebase_admin import auth, exceptions
    try:
        uid, changed = set_admin(settings, args.email, admin)
    except auth.UserNotFoundError:
        print(f"branet: no Firebase user with e-mail {args.email!r}", file=sys.stderr)
        return 1
    except exceptions.FirebaseError as e:
        print(f"branet: Firebase Authentication refused or did not answer: {e}", file=sys.stderr)
        return 1
    if admin:
        print(f"branet: {args.email} (uid {uid}) is an admin" + ("" if changed else " already") + "; it applies to "
              "the ID tokens the user gets from now on (the app refreshes its token within the hour, or sign in "
              "again)", file=sys.stderr)
    else:
        print(f"branet: {args.email} (uid {uid}) is " + ("no longer" if changed else "not") + " an admin; its "
              "sessions are revoked (it signs in again, without admin rights)", file=sys.stderr)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    import httpx
    if not args.token:
        print("branet: a token is needed (--token or BRANET_TOKEN)", file=sys.stderr)
        return 2
    if not args.image.is_file():
        print(f"branet: no such file: {args.image}", file=sys.stderr)
        return 2
    prompt = {"box": args.box} if args.box else ({"points": [[x, y, 1] for x, y in args.point]} if args.point else {})
    if args.auto:
        if prompt:
            print("branet: --auto is the automatic mode: give it without --box or --point", file=sys.stderr)
            return 2
        prompt = {"auto": args.auto}
    headers = {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.server, headers=headers, timeout=args.timeout) as client:
        try:
            with args.image.open("rb") as fh:
                res = client.post("/v1/analyses", files={"file": (args.image.name, fh)},
                                  data={"modality": args.modality, "prompt": json.dumps(prompt)})
        except httpx.HTTPError as e:
            print(f"branet: cannot reach {args.server}: {e}", file=sys.stderr)
            return 1
        if res.status_code != 201:
            try:
                error = res.json()["error"]
                message = error["message"]
            except (ValueError, KeyError, TypeError):
                error, message = {}, res.text[:200]
            if error.get("code") == "no_lesion_found" and "score" in error:
                # not a failure of the tool: the localiser's honest answer, with its score
                print(f"no lesion found: best score {error['score']:.2f} < threshold {error['threshold']:.2f}; "
                      f"give --box X0 Y0 X1 Y1 if you see one")
                return 3
            print(f"branet: {res.status_code}: {message}", file=sys.stderr)
            return 1
        result = res.json()
        overlay = args.overlay or args.image.with_name(f"{args.image.stem}.overlay.png")
        overlay.write_bytes(client.get(f"/v1/analyses/{result['id']}/overlay.png").content)
    seg = result["segmentation"]
    print(f"{result['label']}  p(malignant) = {result['p_malignant']:.3f}  (threshold {result['threshold']:.3f})")
    print(f"lesion box {seg['box']}  SAM {seg['sam_model']} score {seg['score']:.2f}  "
          f"classifier {result['models']['classifier']['name']}@{result['models']['classifier']['version']}")
    if seg.get("auto_mode") == "localiser":
        print(f"found automatically by {result['models']['localiser']['name']} (lesion score threshold "
              f"{seg['lesion_threshold']:.2f}); candidates, best first (the first is outlined):")
        for k, c in enumerate(seg["candidates"], start=1):
            print(f"  {k}. box {c['box']}  score {c['score']:.2f}")
    elif seg.get("auto_mode") == "sam-amg":
        print("found automatically by SAM's automatic mask generator")
    print(f"analysis {result['id']}  overlay {overlay}  ({result['timings_ms']['total']:.0f} ms)")
    print(result["notice"])
    return 0

# models: over the API with an admin token, else (or when the server does not answer) on the models folder
class _Api:
    def __init__(self, args: argparse.Namespace):
        import httpx
        self.client = httpx.Client(base_url=args.server, headers={"Authorization": f"Bearer {args.token}"},
                                   timeout=args.timeout)

    def call(self, method: str, path: str, **kw) -> dict:
        res = self.client.request(method, path, **kw)
        if res.status_code >= 400:
            try:
                message = res.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = res.text[:200]
            raise _CliError(f"{res.status_code}: {message}")
        return res.json()


class _CliError(Exception):
    pass


def _local_manager(with_engine: bool = False):
    from server.engine import Engine
    from server.model_manager import ModelManager
    from server.model_registry import ModelRegistry
    from server.settings import get_settings
    settings = get_settings()
    registry = ModelRegistry(settings.models_root)
    registry.register_committed(settings.weights)  # a fresh install: the committed weights are version 1
    return ModelManager(settings, registry, Engine(settings) if with_engine else None)


def _actor() -> str:
    import getpass
    return f"cli:{getpass.getuser()}"


def _models(args: argparse.Namespace) -> int:
    """Run args.models_command over the API when a token is given and the server answers, else locally."""
    import httpx
    try:
        if args.token:
            try:
                api = _Api(args)
                api.client.get("/healthz")
            except httpx.HTTPError as e:
                print(f"branet: {args.server} does not answer ({e}); working on the local models folder",
                      file=sys.stderr)
            else:
                return MODEL_COMMANDS[args.models_command](args, api)
        return MODEL_COMMANDS[args.models_command](args, None)
    except _CliError as e:
        print(f"branet: {e}", file=sys.stderr)
        return 1


def _models_list(args: argparse.Namespace, api) -> int:
    versions = api.call("GET", "/v1/models")["versions"] if api else _local_manager().listing()
    rows = [("role", "id", "active", "source", "sha256", "deployed", "activated", "cv_auc")]
    for role, listed in sorted(versions.items()):
        for v in listed:
            quality = v.get("quality")
            quality = quality.model_dump() if hasattr(quality, "model_dump") else quality
            rows.append((role, v["id"], "*" if v["active"] else "", v["source"], v["sha256"][:12],
                         f"{v['deployed_by']} {v['deployed_at'][:19]}",
                         f"{v['activated_by']} {v['activated_at'][:19]}" if v.get("activated_by") else "-",
                         f"{quality['cv_auc']:.3f}" if quality else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _models_deploy(args: argparse.Namespace, api) -> int:
    from models.manifest import Manifest
    from server.model_manager import ModelRefused, needed_files
    from server.model_registry import ROLES, role_entry
    manifest_path = args.dir / "manifest.json"
    if not manifest_path.is_file():
        raise _CliError(f"no manifest.json in {args.dir} (a folder `python -m training export --to` wrote)")
    manifest_bytes = manifest_path.read_bytes()
    manifest = Manifest.model_validate_json(manifest_bytes)
    roles = [args.role] if args.role else [r for r in ROLES if role_entry(manifest, r) is not None]
    if not roles:
        raise _CliError(f"{manifest_path} has no {', '.join(ROLES[:-1])} or {ROLES[-1]} entry")
    manager = None if api else _local_manager(with_engine=True)
    for role in roles:
        files = needed_files(manifest, role) if role_entry(manifest, role) is not None else {}
        gate = {"gate_data": args.gate, "gate_margin": args.gate_margin, "gate_roi_source": args.gate_roi_source or "sam"}
        if api:
            handles = [(args.dir / name).open("rb") for name in files if (args.dir / name).is_file()]
            try:
                version = api.call("POST", "/v1/admin/models", data={"role": role, **{k: v for k, v in gate.items()
                                                                                    if v is not None}},
                                   files=[("manifest", ("manifest.json", manifest_bytes)),
                                          *[("files", (Path(h.name).name, h)) for h in handles]])
            finally:
                for h in handles:
                    h.close()
        else:
            import shutil
            staging = manager.registry.new_staging()
            for name in files:
                if (args.dir / name).is_file():
                    shutil.copyfile(args.dir / name, staging / name)
            try:
                version = manager.deploy(staging, manifest_bytes, role, _actor(), **gate).model_dump()
            except ModelRefused as e:
                raise _CliError(f"{role} refused: check {e.check!r} failed: {e.message}") from None
        print(f"{version['id']}: {role} sha256 {version['sha256'][:12]} deployed")
        if args.activate:
            _print_switch(api.call("POST", f"/v1/admin/models/{version['id']}/activate") if api
                          else manager.activate(version["id"], _actor()))
    return 0


def _print_switch(result: dict) -> None:
    print(f"{result['role']}: {result['active']} active (was {result['previous']})")


def _models_switch(args: argparse.Namespace, api) -> int:
    from server.model_manager import ModelRefused, NothingToRollBack, NotFound
    rollback = args.models_command == "rollback"
    if api:
        path = f"/v1/admin/models/{args.role}/rollback" if rollback else f"/v1/admin/models/{args.id}/activate"
        _print_switch(api.call("POST", path))
        return 0
    manager = _local_manager()
    try:
        _print_switch(manager.rollback(args.role, _actor()) if rollback else manager.activate(args.id, _actor()))
    except (NotFound, NothingToRollBack) as e:
        raise _CliError(str(e)) from None
    except ModelRefused as e:
        raise _CliError(f"check {e.check!r} failed: {e.message}") from None
    print("branet: a running server serves it within BRANET_MODELS_POLL_S", file=sys.stderr)
    return 0


MODEL_COMMANDS = {"list": _models_list, "deploy": _models_deploy, "activate": _models_switch,
                  "rollback": _models_switch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="branet", description="BraNet server (research use only)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the server (settings: BRANET_* environment, see README)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(run=_serve)
    users = sub.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    add = users.add_parser("add", help="create a user with a sign-in password and print its API token "
                                       "(alone on stdout)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    source = add.add_mutually_exclusive_group()
    source.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin "
                                                                      "(else: typed twice at the terminal)")
    source.add_argument("--no-password", action="store_true", help="a token-only user: no sign-in")
    add.set_defaults(run=_users_add)
    passwd = users.add_parser("passwd", help="set a user's sign-in password (ends its sessions)")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help="read it from one line of stdin")
    passwd.set_defaults(run=_users_passwd)
    listing = users.add_parser("list", help="every user: role, created, password or not, API tokens, active sessions")
    listing.set_defaults(run=_users_list)
    revoke = users.add_parser("revoke", help="end every API token and sign-in session of a user, at once")
    revoke.add_argument("name")
    revoke.set_defaults(run=_users_revoke)
    rotate = users.add_parser("rotate", help="revoke, then print one new API token (alone on stdout)")
    rotate.add_argument("name")
    rotate.set_defaults(run=lambda a: _users_revoke(a, new_token=True))
    grant = users.add_parser("grant-admin", help="BRANET_AUTH=firebase: make the user with this e-mail an admin "
                                                 "(custom claim admin: true)")
    grant.add_argument("email")
    grant.set_defaults(run=lambda a: _users_admin(a, admin=True))
    revoke_admin = users.add_parser("revoke-admin", help="BRANET_AUTH=firebase: take admin rights away (and revoke "
                                                         "the user's sessions so that it applies at once)")
    revoke_admin.add_argument("email")
    revoke_admin.set_defaults(run=lambda a: _users_admin(a, admin=False))
    analyze = sub.add_parser("analyze", help="analyse an image on a server; writes IMAGE.overlay.png")
    analyze.add_argument("image", type=Path)
    analyze.add_argument("--modality", choices=["us", "dm"], required=True)
    analyze.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"))
    analyze.add_argument("--point", type=float, nargs=2, action="append", metavar=("X", "Y"),
                         help="a point on the lesion (repeatable); no box or point = automatic (the "
                              "modality's lesion localiser, else SAM's automatic mask generator; --auto chooses)")
    analyze.add_argument("--auto", choices=["localiser", "sam-amg"],
                         help="automatic mode (no box or point): sam-amg is the paper's generator, minutes on a CPU")
    analyze.add_argument("--server", default=os.environ.get("BRANET_SERVER", "http://127.0.0.1:8000"))
    analyze.add_argument("--token", default=os.environ.get("BRANET_TOKEN"))
    analyze.add_argument("--overlay", type=Path, help="where to write the overlay PNG")
    analyze.add_argument("--timeout", type=float, default=600.0)
    analyze.set_defaults(run=_analyze)
    models = sub.add_parser("models", help="model versions: list, deploy, activate, roll back (over the API with an "
                                           "admin token, else on the local models folder)")
    models.set_defaults(run=_models)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=os.environ.get("BRANET_SERVER", "http://127.0.0.1:8000"))
    common.add_argument("--token", default=os.environ.get("BRANET_TOKEN"), help="an admin's token (else: local)")
    common.add_argument("--timeout", type=float, default=1800.0)
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", parents=[common], help="every version per role; * marks the active one")
    deploy = models_sub.add_parser("deploy", parents=[common], help="validate and store the versions in DIR (a `training export` "
                                                  "folder): every role it holds (classifiers, localisers), or --role")
    deploy.add_argument("dir", type=Path)
    deploy.add_argument("--role", choices=ROLE_CHOICES)
    deploy.add_argument("--activate", action="store_true", help="serve it once it is stored")
    deploy.add_argument("--gate", metavar="DATA", help="validation folder (on the server; relative: under BRANET_DATA)")
    deploy.add_argument("--gate-margin", type=float)
    deploy.add_argument("--gate-roi-source", choices=["sam", "box", "expert"])
    activate = models_sub.add_parser("activate", parents=[common], help="serve this version in its role")
    activate.add_argument("id")
    rollback = models_sub.add_parser("rollback", parents=[common], help="serve the role's previously active version again")
    rollback.add_argument("role", choices=ROLE_CHOICES)
    args = parser.parse_args(argv)
    if args.command == "users" and args.users_command not in ("grant-admin", "revoke-admin"):
        from server.settings import get_settings
        if get_settings().auth == "firebase":
            print("branet: BRANET_AUTH=firebase: people sign in with Firebase Authentication, whose users are managed "
                  "there (Firebase console, or the app's sign-up); here only `branet users grant-admin EMAIL` and "
                  "`revoke-admin EMAIL`", file=sys.stderr)
            return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
