# Produces the known-answer vector of src/postgres/iam.rs's test with
# botocore's own generate_db_auth_token, at a fixed time:
#   python3 -m venv /tmp/boto && /tmp/boto/bin/pip install botocore==1.40.0
#   /tmp/boto/bin/python src/postgres/testdata/rds_token.py
import datetime
from unittest import mock

import botocore.session

session = botocore.session.get_session()
session.set_credentials(
    "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "SESSIONTOKEN/example+="
)
client = session.create_client("rds", region_name="eu-west-1")
fixed = datetime.datetime(2026, 11, 28, 12, 0, 0)
with mock.patch("botocore.auth.datetime") as clock:
    clock.datetime.utcnow.return_value = fixed
    print(
        client.generate_db_auth_token(
            "saldos.cluster-abc.eu-west-1.rds.amazonaws.com", 5432, "app_saldos"
        )
    )
