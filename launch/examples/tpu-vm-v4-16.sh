# jaxseq train on the Cloud TPU VM slice asr (v4-16, 2 hosts) in us-central2-b; JAX finds the other hosts by itself.
# Every worker mounts gs://my-bucket at /mnt/gcs/my-bucket (gcsfuse); the workdir is /mnt/gcs/my-bucket/runs/asr.

# create
gcloud compute tpus tpu-vm create asr --accelerator-type v4-16 --version tpu-ubuntu2204-base --zone us-central2-b --project my-project

# install
gcloud compute tpus tpu-vm ssh asr --worker=all --command 'echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null && sudo apt-get update -q && sudo apt-get install -y -q python3.11-venv gcsfuse && (mountpoint -q /mnt/gcs/my-bucket || (sudo mkdir -p /mnt/gcs/my-bucket && sudo chown "$USER" /mnt/gcs/my-bucket && gcsfuse --implicit-dirs --rename-dir-limit=200000 my-bucket /mnt/gcs/my-bucket)) && rm -rf jaxseq && git clone --depth 1 https://github.com/YOUR_ORG/jaxseq.git jaxseq && cd jaxseq && python3.11 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . "jax[tpu]" && mkdir -p data && gcloud storage rsync -r gs://my-bucket/data/libri data/libri' --zone us-central2-b --project my-project

# train
gcloud compute tpus tpu-vm ssh asr --worker=all --command '(mountpoint -q /mnt/gcs/my-bucket || (sudo mkdir -p /mnt/gcs/my-bucket && sudo chown "$USER" /mnt/gcs/my-bucket && gcsfuse --implicit-dirs --rename-dir-limit=200000 my-bucket /mnt/gcs/my-bucket)) && cd jaxseq && set -o pipefail && .venv/bin/jaxseq train --config configs/ctc_base.yaml --workdir /mnt/gcs/my-bucket/runs/asr data.dataset=data/libri train.num_steps=100000 '"'"'data.buckets=[500,1000,2000]'"'"' 2>&1 | tee ~/jaxseq-train.log' --zone us-central2-b --project my-project

# logs
mkdir -p runs/asr-logs
gcloud compute tpus tpu-vm scp asr:jaxseq-train.log runs/asr-logs/worker-0.log --worker=0 --zone us-central2-b --project my-project
gcloud compute tpus tpu-vm scp asr:jaxseq-train.log runs/asr-logs/worker-1.log --worker=1 --zone us-central2-b --project my-project

# delete
gcloud compute tpus tpu-vm delete asr --quiet --zone us-central2-b --project my-project
