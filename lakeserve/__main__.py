"""``python -m lakeserve ...`` is the ``lakeserve`` command: what cron, Airflow and spark-submit call
(``python -m lakeserve --config FILE jobs run monitor``)."""

import sys

from lakeserve.cli import main

sys.exit(main())
