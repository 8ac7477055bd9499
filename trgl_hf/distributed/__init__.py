"""Several processes: how many there are (`processes`), averaged gradients (`grad_sync`) and FSDP2 sharding
(`fsdp`)."""
