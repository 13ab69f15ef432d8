"""The zoo's training step as the jit and device tests run it: Adam on ``loss_fn``."""


def train_step(model, opt, loss_fn):
    """``step(x, y)``: zero the gradients, the loss, backward, the optimiser's step; the loss."""
    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step
