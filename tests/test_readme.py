"""The README's support matrix is the registry's: regenerate with `python -m gdn info --matrix-md`."""
import os
import re

from gdn.cli import support_matrix_md

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def test_readme_support_matrix_is_current():
    text = open(README).read()
    m = re.search(r"<!-- support-matrix:begin -->\n(.*?)<!-- support-matrix:end -->", text, re.S)
    assert m, "README lacks the support-matrix markers"
    assert m.group(1).strip() == support_matrix_md().strip(), \
        "README support matrix is stale: run `python scripts/update_readme.py`"
