"""Deploying fedshield at data-owning sites on Flower's Deployment Engine: the
federation's keys (:mod:`.pki`), the coordinator's folder, SuperLink and site
registry (:mod:`.federation`), and a site's SuperNode (:mod:`.site`).
See docs/deployment.md."""
