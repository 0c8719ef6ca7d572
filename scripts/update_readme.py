"""Regenerate the README's support matrix from the registry (run with TRITON_INTERPRET unset or set: the
matrix does not depend on it)."""
import os
import re

from gdn.cli import support_matrix_md

path = os.path.join(os.path.dirname(__file__), "..", "README.md")
text = open(path).read()
new = re.sub(r"(<!-- support-matrix:begin -->\n).*?(<!-- support-matrix:end -->)",
             lambda m: m.group(1) + support_matrix_md() + "\n" + m.group(2), text, flags=re.S)
open(path, "w").write(new)
print("README support matrix updated")
