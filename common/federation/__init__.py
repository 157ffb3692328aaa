"""The wire contract between coordinator and sites, and how Flower programs are found."""
