"""A LocalStack provider for the AWS Price List Query API (`pricing`), which the
LocalStack community edition does not serve: GetProducts answers from a small price list
in AWS's PriceList format, for the instance and node types that the tests and the
example stack.yaml use, and refuses what AWS documents it refuses.

THE PRICES BELOW ARE TEST DATA, NOT AWS'S PUBLISHED FIGURES. They are round numbers
chosen so that a test can check `plan`'s arithmetic; `realtime-stack plan` against AWS
reads AWS's own prices at run time.

GetProducts, as the API reference documents it
(https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_GetProducts.html):
ServiceCode is required; at most 50 Filters; MaxResults from 1 to 100; FormatVersion
`aws_v1`. A Filter (https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_Filter.html)
has a Field of 1 to 1024 characters, a Type among TERM_MATCH, EQUALS, CONTAINS, ANY_OF and
NONE_OF, and a Value. Each PriceList item is one product as a JSON string: its `product`
(sku, productFamily, attributes) and its `terms`.
"""

import json

from localstack.aws.api import CommonServiceException
from localstack.aws.skeleton import Skeleton
from localstack.aws.spec import load_service
from localstack.services.plugins import Service, aws_provider

# The PriceList item's OnDemand offer term code: AWS's, the same in every on-demand offer.
ON_DEMAND_TERM = "JRTCKXETXF"
# The price dimension's rate code: AWS's, for the term's one rate.
RATE_CODE = "6YS6EN2CT7"

FILTER_TYPES = ("TERM_MATCH", "EQUALS", "CONTAINS", "ANY_OF", "NONE_OF")
MAX_RESULTS = 100
MAX_FILTERS = 50
MAX_FIELD_LENGTH = 1024

# TEST DATA: hourly USD prices made up for the tests, not AWS's.
# (instance type, region, operating system, USD an hour)
EC2_TEST_PRICES = [
    ("t3.micro", "us-east-1", "Linux", "0.0100000000"),
    ("t3.micro", "us-east-1", "Windows", "0.0200000000"),
    ("t3.micro", "eu-west-1", "Linux", "0.0110000000"),
    ("t4g.micro", "us-east-1", "Linux", "0.0080000000"),
    ("t4g.small", "us-east-1", "Linux", "0.0160000000"),
    ("t4g.medium", "us-east-1", "Linux", "0.0320000000"),
    ("c7g.large", "us-east-1", "Linux", "0.0700000000"),
    ("c7g.xlarge", "us-east-1", "Linux", "0.1400000000"),
    ("c7i.large", "us-east-1", "Linux", "0.0900000000"),
    ("c7i.xlarge", "us-east-1", "Linux", "0.1800000000"),
    ("m7g.large", "us-east-1", "Linux", "0.0800000000"),
]
# (node type, region, engine, USD an hour)
CACHE_TEST_PRICES = [
    ("cache.t4g.micro", "us-east-1", "Redis", "0.0200000000"),
    ("cache.t4g.micro", "us-east-1", "Valkey", "0.0150000000"),
    ("cache.t4g.micro", "us-east-1", "Memcached", "0.0200000000"),
    ("cache.t4g.micro", "eu-west-1", "Redis", "0.0220000000"),
    ("cache.m7g.large", "us-east-1", "Redis", "0.1500000000"),
    ("cache.m7g.large", "us-east-1", "Valkey", "0.1200000000"),
    ("cache.r7g.large", "us-east-1", "Redis", "0.2000000000"),
    ("cache.r7g.large", "us-east-1", "Valkey", "0.1600000000"),
]
# Redis OSS Extended Support's surcharge by the node hour, listed under the same node
# type and engine as the node's own hours, told apart by usage type
# (https://aws.amazon.com/elasticache/pricing/): (usage type's start, USD an hour more).
EXTENDED_SUPPORT_TEST_PRICES = [
    ("ExtendedSupportYr1_Yr2-", "0.0100000000"),
    ("ExtendedSupportYr3-", "0.0200000000"),
]
# (region, usage type, unit, USD per unit): an Application Load Balancer's products, as
# AWS lists them: the hours it runs, the LCUs it uses, and a trust store's hours
# (https://docs.aws.amazon.com/elasticloadbalancing/latest/userguide/load-balancer-billing-usage-reports.html).
ALB_TEST_PRICES = [
    ("us-east-1", "LoadBalancerUsage", "Hrs", "0.0250000000"),
    ("us-east-1", "LCUUsage", "LCU-Hrs", "0.0100000000"),
    ("us-east-1", "TS-LoadBalancerUsage", "Hrs", "0.0050000000"),
    ("eu-west-1", "LoadBalancerUsage", "Hrs", "0.0270000000"),
]
# The code that starts a region's usage types in every service's products (none in
# us-east-1), as in the page above: USE2-, EU-, ...
BILLING_CODES = {"us-east-1": "", "eu-west-1": "EU-"}


def product(service: str, sku: str, family: str, attributes: dict, unit: str, usd: str) -> dict:
    """One PriceList item in AWS's format, with one on-demand price dimension."""
    offer = f"{sku}.{ON_DEMAND_TERM}"
    return {
        "product": {
            "productFamily": family,
            "attributes": {"servicecode": service, **attributes},
            "sku": sku,
        },
        "serviceCode": service,
        "terms": {
            "OnDemand": {
                offer: {
                    "offerTermCode": ON_DEMAND_TERM,
                    "sku": sku,
                    "effectiveDate": "2026-01-01T00:00:00Z",
                    "priceDimensions": {
                        f"{offer}.{RATE_CODE}": {
                            "rateCode": f"{offer}.{RATE_CODE}",
                            "description": f"TEST DATA: USD {usd} per {unit}",
                            "unit": unit,
                            "beginRange": "0",
                            "endRange": "Inf",
                            "pricePerUnit": {"USD": usd},
                            "appliesTo": [],
                        }
                    },
                    "termAttributes": {},
                }
            }
        },
        "version": "test",
        "publicationDate": "2026-01-01T00:00:00Z",
    }


def price_list() -> dict[str, list[dict]]:
    """The test price list, by service code."""
    ec2 = [
        product(
            "AmazonEC2",
            f"TESTEC2{index:04d}",
            "Compute Instance",
            {
                "instanceType": instance_type,
                "regionCode": region,
                "operatingSystem": system,
                "tenancy": "Shared",
                "preInstalledSw": "NA",
                "capacitystatus": "Used",
                "licenseModel": "No License required",
                "usagetype": f"{BILLING_CODES[region]}BoxUsage:{instance_type}",
            },
            "Hrs",
            usd,
        )
        for index, (instance_type, region, system, usd) in enumerate(EC2_TEST_PRICES)
    ]
    # A node's own hours (no usage type prefix), and for Redis the Extended Support
    # surcharges listed beside them.
    node_hours = [
        (node_type, region, engine, "", usd)
        for node_type, region, engine, usd in CACHE_TEST_PRICES
    ] + [
        (node_type, region, engine, support, surcharge)
        for node_type, region, engine, _ in CACHE_TEST_PRICES
        if engine == "Redis"
        for support, surcharge in EXTENDED_SUPPORT_TEST_PRICES
    ]
    cache = [
        product(
            "AmazonElastiCache",
            f"TESTCACHE{index:04d}",
            "Cache Instance",
            {
                "instanceType": node_type,
                "regionCode": region,
                "cacheEngine": engine,
                "usagetype": f"{BILLING_CODES[region]}{support}NodeUsage:{node_type}",
            },
            "Hrs",
            usd,
        )
        for index, (node_type, region, engine, support, usd) in enumerate(node_hours)
    ]
    elb = [
        product(
            "AWSELB",
            f"TESTELB{index:04d}",
            "Load Balancer-Application",
            {
                "regionCode": region,
                "usagetype": f"{BILLING_CODES[region]}{usage}",
                "operation": "LoadBalancing:Application",
            },
            unit,
            usd,
        )
        for index, (region, usage, unit, usd) in enumerate(ALB_TEST_PRICES)
    ]
    return {"AmazonEC2": ec2, "AmazonElastiCache": cache, "AWSELB": elb}


def invalid(message: str) -> CommonServiceException:
    return CommonServiceException("InvalidParameterException", message, status_code=400)


def field_value(item: dict, field: str):
    if field == "ServiceCode":
        return item["serviceCode"]
    if field == "productFamily":
        return item["product"]["productFamily"]
    return item["product"]["attributes"].get(field)


def matches(item: dict, kind: str, field: str, value: str) -> bool:
    actual = field_value(item, field)
    if kind == "NONE_OF":
        return actual is None or actual not in [v.strip() for v in value.split(",")]
    if actual is None:
        return False
    if kind in ("TERM_MATCH", "EQUALS"):
        return actual == value
    if kind == "CONTAINS":
        return value in actual
    return actual in [v.strip() for v in value.split(",")]


def get_products(_context, request):
    service = request.get("ServiceCode")
    if not service:
        raise invalid("ServiceCode is required.")
    listed = price_list()
    if service not in listed:
        raise CommonServiceException(
            "NotFoundException", f"Service code {service} not found.", status_code=400
        )
    format_version = request.get("FormatVersion")
    if format_version is not None and format_version != "aws_v1":
        raise invalid(f"FormatVersion {format_version} is not valid: aws_v1 is.")
    page_size = request.get("MaxResults")
    if page_size is not None and not 1 <= page_size <= MAX_RESULTS:
        raise invalid(f"MaxResults must be between 1 and {MAX_RESULTS}; it was {page_size}.")
    filters = request.get("Filters") or []
    if len(filters) > MAX_FILTERS:
        raise invalid(f"At most {MAX_FILTERS} Filters; there were {len(filters)}.")
    for each in filters:
        if each.get("Type") not in FILTER_TYPES:
            raise invalid(f"Filter Type {each.get('Type')} is not one of {', '.join(FILTER_TYPES)}.")
        if not 1 <= len(each.get("Field") or "") <= MAX_FIELD_LENGTH:
            raise invalid(f"A Filter Field has 1 to {MAX_FIELD_LENGTH} characters.")
        if each.get("Value") is None:
            raise invalid("A Filter needs a Value.")
    found = [
        item
        for item in listed[service]
        if all(matches(item, f["Type"], f["Field"], f["Value"]) for f in filters)
    ]
    token = request.get("NextToken")
    try:
        start = int(token) if token else 0
    except ValueError:
        raise CommonServiceException(
            "InvalidNextTokenException", "The pagination token is invalid.", status_code=400
        ) from None
    end = start + (page_size or MAX_RESULTS)
    response = {
        "FormatVersion": "aws_v1",
        "PriceList": [json.dumps(item) for item in found[start:end]],
    }
    if end < len(found):
        response["NextToken"] = str(end)
    return response


def not_served(_context, _request):
    raise CommonServiceException(
        "InternalErrorException",
        "This test provider serves GetProducts only.",
        status_code=500,
    )


@aws_provider()
def pricing() -> Service:
    model = load_service("pricing")
    dispatch_table = {operation: not_served for operation in model.operation_names}
    dispatch_table["GetProducts"] = get_products
    return Service(name="pricing", skeleton=Skeleton(model, dispatch_table))
