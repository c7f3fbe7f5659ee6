from lm_eval_ssmsteer.cli import main

raise SystemExit(main())
