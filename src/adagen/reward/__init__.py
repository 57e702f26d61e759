"""The adversarial reward: a discriminator on a frozen pretrained backbone, trained jointly with the policy."""
