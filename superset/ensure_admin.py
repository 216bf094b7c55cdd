"""Create or update Superset's admin UI login; run with the Superset virtualenv's Python.

The password is read from the file ``DWH_SUPERSET_ADMIN_PASSWORD_FILE`` names (0600, made by
``dwh up``), so it never appears on a command line or in the environment. Idempotent: an
existing user keeps its id and gets the file's password.
"""

import os
import sys
from pathlib import Path

from superset.app import create_app

USERNAME = os.environ.get("DWH_SUPERSET_ADMIN_USER", "admin")


def main() -> int:
    password = Path(os.environ["DWH_SUPERSET_ADMIN_PASSWORD_FILE"]).read_text().strip()
    app = create_app()
    with app.app_context():
        from superset import security_manager
        from superset.extensions import db

        role = security_manager.find_role("Admin")
        if role is None:
            print("no Admin role: run `superset init` first", file=sys.stderr)
            return 1
        user = security_manager.find_user(username=USERNAME)
        if user is None:
            user = security_manager.add_user(USERNAME, "Warehouse", "Admin", f"{USERNAME}@localhost", role,
                                             password=password)
            if not user:
                print(f"could not create the Superset user {USERNAME}", file=sys.stderr)
                return 1
            print(f"created Superset user {USERNAME}")
        else:
            security_manager.reset_password(user.id, password)
            if role not in user.roles:
                user.roles.append(role)
                db.session.commit()
            print(f"Superset user {USERNAME}: password set from its file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
