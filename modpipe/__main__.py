from modpipe.cli import main

main()
