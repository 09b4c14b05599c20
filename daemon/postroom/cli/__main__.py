"""`python -m postroom.cli`: how the supervisor and the tests start the command."""

from postroom.cli import main

main()
