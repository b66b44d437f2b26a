"""`python -m train`: the training CLI (see train.cli); no logic here."""

from train.cli import main

raise SystemExit(main())
