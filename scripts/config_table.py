"""Print the README's configuration table from the option table in router/options.py."""

from router.options import OPTIONS

print("| flag | variable | default | what it does |")
print("|---|---|---|---|")
for option in OPTIONS:
    default = option.default if isinstance(option.default, str) else "nameservers of /etc/resolv.conf"
    shown = f"`{default}`" if default else "(empty)"
    print(f"| `{option.flag}` | `{option.env}` | {shown} | {option.help.replace('|', '/')} |")
