"""Label fusion: guide labeller (seeds + saliency) and box-supervised candidate selection; pure array functions."""
