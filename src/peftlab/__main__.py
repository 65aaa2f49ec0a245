from peftlab.cli import main

if __name__ == "__main__":  # guarded: `peftlab bench` spawns training processes that re-import this module
    main()
