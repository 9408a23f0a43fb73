"""`branet`: serve, manage users, and analyse an image against a running server."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from models.manifest import WeightsError


def _serve(args: argparse.Namespace) -> int:
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
                message = res.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = res.text[:200]
            print(f"branet: {res.status_code}: {message}", file=sys.stderr)
            return 1
        result = res.json()
        overlay = args.overlay or args.image.with_name(f"{args.image.stem}.overlay.png")
        overlay.write_bytes(client.get(f"/v1/analyses/{result['id']}/overlay.png").content)
    seg = result["segmentation"]
    print(f"{result['label']}  p(malignant) = {result['p_malignant']:.3f}  (threshold {result['threshold']:.3f})")
    print(f"lesion box {seg['box']}  SAM {seg['sam_model']} score {seg['score']:.2f}  "
          f"classifier {result['models']['classifier']['name']}@{result['models']['classifier']['version']}")
    print(f"analysis {result['id']}  overlay {overlay}  ({result['timings_ms']['total']:.0f} ms)")
    print(result["notice"])
    return 0


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
                         help="a point on the lesion (repeatable); no box or point = automatic")
    analyze.add_argument("--server", default=os.environ.get("BRANET_SERVER", "http://127.0.0.1:8000"))
    analyze.add_argument("--token", default=os.environ.get("BRANET_TOKEN"))
    analyze.add_argument("--overlay", type=Path, help="where to write the overlay PNG")
    analyze.add_argument("--timeout", type=float, default=600.0)
    analyze.set_defaults(run=_analyze)
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
