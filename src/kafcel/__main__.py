from .cli import main

# Guarded: importing the module (a check that every module imports) must not run the CLI.
if __name__ == "__main__":
    main()
