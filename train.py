"""Train an autoencoder: `python train.py model=vae data=fashion`. See `aelab.train`."""

from aelab.train import main

if __name__ == "__main__":
    main()
