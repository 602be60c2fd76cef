"""`make kernel`: builds kernel/ (one offline inference notebook) from src/lumbar and weights/.

The builder lives in the package (`lumbar.commands.notebook`); this file is the design card's entry point:
    python build_kernel.py --weights weights --out kernel
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from lumbar.commands.notebook import BuildError, build, closure, main  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
