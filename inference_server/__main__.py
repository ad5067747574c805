import sys

from inference_server.app import main

sys.exit(main())
