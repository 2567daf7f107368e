from lightdist.main import main

# The guard matters: ddp_spawn children import this module as __mp_main__.
if __name__ == "__main__":
    main()
