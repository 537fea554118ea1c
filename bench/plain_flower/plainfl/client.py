"""Plain ClientApp: SGD on the client's partition, nothing else."""

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedprune.data import load_dataset, partition_indices, train_val_split
from fedprune.models import build_model

app = ClientApp()
_cache: dict = {}


def _data(cfg, pid, n):
    key = (pid, n, cfg["seed"], cfg["max-samples-per-client"])
    if key not in _cache:
        train, _ = load_dataset("fashion-mnist")
        idx = partition_indices(train.y.numpy(), n, "iid", seed=cfg["seed"])[pid]
        if cfg["max-samples-per-client"]:
            idx = np.random.default_rng(cfg["seed"] + pid).permutation(idx)[: cfg["max-samples-per-client"]]
        tr, _ = train_val_split(idx, 0.1, seed=cfg["seed"] * 1000 + pid)  # same split as fedprune
        _cache[key] = train.subset(tr)
    return _cache[key]


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    pid, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    data = _data(cfg, pid, n)
    model = build_model("lenet5")
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight-decay"])
    g = torch.Generator().manual_seed(int(cfg["seed"]) * 7919 + pid)
    model.train()
    for _ in range(int(cfg["local-epochs"])):
        perm = torch.randperm(len(data), generator=g)
        for i in range(0, len(perm), int(cfg["batch-size"])):
            b = perm[i: i + int(cfg["batch-size"])]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(data.x[b]), data.y[b]).backward()
            opt.step()
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(data)})})
    return Message(content=content, reply_to=msg)
