# Lets the tests import the top-level scripts (model.py, losses.py, ...) from the repository root.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
