# Dataflow job prep-libri: jaxseq prepare --runner beam, up to 100 workers (n2-standard-8).
# Workers run us-docker.pkg.dev/my-project/jaxseq/jaxseq-beam:latest
# (a Beam Python SDK image with jaxseq[beam] installed), and must see the manifest,
# its audio and /mnt/data/prepared at the paths below, as this machine does.
jaxseq prepare --config configs/ctc_base.yaml --source manifest:/mnt/data/libri/train.jsonl --out /mnt/data/prepared --split train --runner beam '--beam-options=--runner=DataflowRunner --project=my-project --region=us-central1 --job_name=prep-libri --temp_location=gs://my-bucket/tmp --sdk_container_image=us-docker.pkg.dev/my-project/jaxseq/jaxseq-beam:latest --max_num_workers=100 --machine_type=n2-standard-8' prepare.num_shards=1024
