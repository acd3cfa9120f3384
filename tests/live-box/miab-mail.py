"""Users, aliases and kick() through Mail-in-a-Box's own management/mailconfig.py.

Run inside the box with MIAB's venv and PYTHONPATH=/root/mailinabox/management:
  miab-mail.py add-user EMAIL PASSWORD [PRIV] mailconfig.add_mail_user (which kicks)
  miab-mail.py add-alias ADDRESS TO SENDERS   mailconfig.add_mail_alias (which kicks)
  miab-mail.py set-quota EMAIL QUOTA          mailconfig.set_mail_quota
  miab-mail.py kick                           mailconfig.kick
  miab-mail.py dump                           users and aliases, one per line, sorted

kick() ends in dns_update.do_dns_update() and web_update.do_web_update(). This box has
no nsd (MIAB's authoritative DNS; a stand-in DNS server answers instead) and no nginx, so
those two are replaced by their mail part only: MIAB's own write_opendkim_tables() and,
when it changed the tables, `service opendkim restart`, exactly as do_dns_update does.
"""
import sys

import dns_update
import mailconfig
import utils
import web_update


def mail_part_of_dns_update(env, force=False):
    if dns_update.write_opendkim_tables(mailconfig.get_mail_domains(env), env):
        utils.shell("check_call", ["/usr/sbin/service", "opendkim", "restart"])
        return "updated DNS: OpenDKIM configuration\n"
    return ""


dns_update.do_dns_update = mail_part_of_dns_update
web_update.do_web_update = lambda env: ""


def check(result):
    # mailconfig returns a string on success and (message, status) on failure.
    if isinstance(result, tuple):
        print("mailconfig refused: %s (%s)" % result, file=sys.stderr)
        sys.exit(1)
    if result:
        print(result.strip())


def main():
    env = utils.load_environment()
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "add-user":
        check(mailconfig.add_mail_user(args[0], args[1], args[2] if len(args) > 2 else "", None, env))
    elif cmd == "add-alias":
        senders = args[2] if len(args) > 2 else ""
        check(mailconfig.add_mail_alias(args[0], args[1], senders, env))
    elif cmd == "set-quota":
        check(mailconfig.set_mail_quota(args[0], args[1], env))
    elif cmd == "kick":
        check(mailconfig.kick(env))
    elif cmd == "dump":
        c = mailconfig.open_database(env)
        c.execute("SELECT email, password, privileges, quota FROM users ORDER BY email")
        for row in c.fetchall():
            print("user", *row)
        for a in sorted(mailconfig.get_mail_aliases(env)):
            print("alias", *[str(x) for x in a])
    else:
        print("unknown command " + cmd, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
