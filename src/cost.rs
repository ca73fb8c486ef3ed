//! What a stack costs a month at on-demand prices: its instances, its Redis nodes and its
//! load balancer's hours, each at the hourly price AWS's Price List Query API
//! (`pricing:GetProducts`) gives at run time for the stack's region. No price is written
//! here. Usage-based charges (load balancer capacity units, data transfer, S3, Route53
//! queries, backups) depend on traffic, which a plan cannot know: they are named as not
//! included.
//!
//! Each resource is found by filters that leave exactly one on-demand hourly price; none,
//! or several, is an error that names the resource and the filters, never a guess.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use aws_sdk_pricing::types::{Filter, FilterType};
use serde::{Deserialize, Serialize};

use crate::aws::Call;
use crate::spec::StackSpec;

/// Hours in a month, as AWS's pricing pages and calculator count them (8 760 / 12).
pub const HOURS_PER_MONTH: f64 = 730.0;

/// The Price List API answers in us-east-1, eu-central-1 and ap-south-1 only (its
/// endpoints: <https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/using-ppslong.html>);
/// it lists every region's prices, which the `regionCode` filter picks from.
pub const PRICE_LIST_REGION: &str = "us-east-1";

/// What the monthly figure leaves out.
pub const NOT_INCLUDED: &str = "usage-based charges: load balancer capacity units (LCUs), \
     data transfer, S3 storage and requests (the binary, access logs), Route53 hosted zone \
     and queries, EBS root volumes, Redis backup storage, CPU credits beyond the baseline, \
     Redis OSS Extended Support (a `redis.engine_version` past standard support)";

/// One priced resource: `count` of `what` at `usd_per_hour` each.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub resource: &'static str,
    pub what: String,
    pub count: u32,
    /// With a scaling policy: the fewest and the most instances.
    pub range: Option<(u32, u32)>,
    pub usd_per_hour: f64,
    pub usd_per_month: f64,
}

/// The stack's monthly cost at on-demand prices.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cost {
    pub region: String,
    pub hours_per_month: f64,
    pub lines: Vec<Line>,
    pub usd_per_month: f64,
    /// With a scaling policy: the total at its fewest and at its most instances.
    pub usd_per_month_range: Option<(f64, f64)>,
    pub not_included: &'static str,
}

/// How to find one resource's price: a service's products, filtered.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub service: &'static str,
    pub filters: Vec<(&'static str, String)>,
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServiceCode={}", self.service)?;
        for (field, value) in &self.filters {
            write!(f, ", {field}={value}")?;
        }
        Ok(())
    }
}

impl Line {
    /// What `count` of the resource cost a month.
    fn monthly(&self, count: u32) -> f64 {
        self.usd_per_hour * f64::from(count) * HOURS_PER_MONTH
    }
}

fn line(resource: &'static str, what: String, count: u32, range: Option<(u32, u32)>) -> Line {
    Line {
        resource,
        what,
        count,
        range,
        usd_per_hour: 0.0,
        usd_per_month: 0.0,
    }
}

/// The instances: Linux, shared tenancy, no pre-installed software, capacity in use (not
/// a reservation's unused hours), the on-demand price of a plain instance.
fn instances(spec: &StackSpec, region: &str) -> (Line, Query) {
    let instance_type = &spec.instances.instance_type;
    (
        line(
            "instances",
            instance_type.clone(),
            spec.instances.count,
            spec.scaling.map(|scaling| (scaling.min, scaling.max)),
        ),
        Query {
            service: "AmazonEC2",
            filters: vec![
                ("instanceType", instance_type.clone()),
                ("regionCode", region.to_owned()),
                ("operatingSystem", "Linux".to_owned()),
                ("tenancy", "Shared".to_owned()),
                ("preInstalledSw", "NA".to_owned()),
                ("capacitystatus", "Used".to_owned()),
            ],
        },
    )
}

/// The Redis nodes: each shard's primary and replicas. A node's hours are told apart by
/// their usage type, `<region's billing code>NodeUsage:<node type>`: the same node type and
/// engine also list Redis OSS Extended Support's surcharges by the node hour
/// (`...ExtendedSupportYr1_Yr2-NodeUsage:<node type>`,
/// <https://aws.amazon.com/elasticache/pricing/>), which a stack on a supported engine
/// version does not pay.
fn redis_nodes(spec: &StackSpec, region: &str, billing_code: &str) -> (Line, Query) {
    let redis = &spec.redis;
    (
        line(
            "redis nodes",
            format!("{} ({})", redis.node_type, redis.engine),
            redis.shards * (1 + redis.replicas),
            None,
        ),
        Query {
            service: "AmazonElastiCache",
            filters: vec![
                ("instanceType", redis.node_type.clone()),
                ("regionCode", region.to_owned()),
                ("cacheEngine", cache_engine(&redis.engine)),
                (
                    "usagetype",
                    format!("{billing_code}NodeUsage:{}", redis.node_type),
                ),
            ],
        },
    )
}

/// The load balancer's hours. Its product family also holds its LCUs and a trust store's
/// hours, told apart by usage type: `<region's billing code>-LoadBalancerUsage`, the code
/// left out in us-east-1
/// (<https://docs.aws.amazon.com/elasticloadbalancing/latest/userguide/load-balancer-billing-usage-reports.html>).
fn load_balancer(region: &str, billing_code: &str) -> (Line, Query) {
    (
        line(
            "load balancer",
            "application load balancer".to_owned(),
            1,
            None,
        ),
        Query {
            service: "AWSELB",
            filters: vec![
                ("productFamily", "Load Balancer-Application".to_owned()),
                ("regionCode", region.to_owned()),
                ("usagetype", format!("{billing_code}LoadBalancerUsage")),
            ],
        },
    )
}

/// The region's billing code as it starts the usage types of its products (`USE2-`, `EU-`,
/// none in us-east-1), read from the instance's (`USE2-BoxUsage:t3.micro`): every
/// service's usage types in a region start with the same code.
fn billing_code(instance_usage_type: Option<&str>) -> Result<&str> {
    match instance_usage_type.and_then(|usage| usage.split_once("BoxUsage:")) {
        Some((code, _)) => Ok(code),
        None => bail!(
            "the instance's price list item has no usage type of the form \
             [<region code>-]BoxUsage:<type> ({instance_usage_type:?}), from which the \
             region's Redis node and load balancer hours are found"
        ),
    }
}

/// The price list's `cacheEngine`: `Redis`, `Valkey`.
fn cache_engine(engine: &str) -> String {
    let mut chars = engine.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// What `spec` costs a month in `region`, at the prices the Price List gives now.
pub async fn monthly(
    pricing: &aws_sdk_pricing::Client,
    spec: &StackSpec,
    region: &str,
) -> Result<Cost> {
    let instances = instances(spec, region);
    let instance_price = hourly_price(pricing, &instances).await?;
    // The nodes' and the load balancer's hours are found by usage types that start with
    // the region's billing code, which the instance's gives.
    let code = billing_code(instance_price.usage_type.as_deref())?;
    let redis_nodes = redis_nodes(spec, region, code);
    let load_balancer = load_balancer(region, code);
    let (node_price, load_balancer_price) = tokio::try_join!(
        hourly_price(pricing, &redis_nodes),
        hourly_price(pricing, &load_balancer)
    )?;
    let priced = |(line, _): (Line, Query), found: Found| Line {
        usd_per_hour: found.usd_per_hour,
        ..line
    };
    Ok(total(
        region,
        vec![
            priced(instances, instance_price),
            priced(redis_nodes, node_price),
            priced(load_balancer, load_balancer_price),
        ],
    ))
}

/// The lines priced by the month, and their total.
fn total(region: &str, lines: Vec<Line>) -> Cost {
    let lines: Vec<Line> = lines
        .into_iter()
        .map(|line| Line {
            usd_per_month: line.monthly(line.count),
            ..line
        })
        .collect();
    let usd_per_month = lines.iter().map(|line| line.usd_per_month).sum();
    let at = |pick: fn((u32, u32)) -> u32| {
        lines
            .iter()
            .map(|line| line.monthly(line.range.map_or(line.count, pick)))
            .sum::<f64>()
    };
    let usd_per_month_range = lines
        .iter()
        .any(|line| line.range.is_some())
        .then(|| (at(|(min, _)| min), at(|(_, max)| max)));
    Cost {
        region: region.to_owned(),
        hours_per_month: HOURS_PER_MONTH,
        lines,
        usd_per_month,
        usd_per_month_range,
        not_included: NOT_INCLUDED,
    }
}

/// A resource's one on-demand hourly price in USD, and its product's usage type.
struct Found {
    usd_per_hour: f64,
    usage_type: Option<String>,
}

/// The one on-demand hourly price that `query` finds for `line`'s resource.
async fn hourly_price(
    pricing: &aws_sdk_pricing::Client,
    (line, query): &(Line, Query),
) -> Result<Found> {
    let resource = format!("{} {}", line.resource, line.what);
    let filters = query
        .filters
        .iter()
        .map(|(field, value)| {
            Filter::builder()
                .r#type(FilterType::TermMatch)
                .field(*field)
                .value(value)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pages: Vec<_> = pricing
        .get_products()
        .service_code(query.service)
        .set_filters(Some(filters))
        .format_version("aws_v1")
        .max_results(100)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let mut found = Vec::new();
    for page in pages {
        let page = page.call(format!("pricing:GetProducts for {resource}"))?;
        for item in page.price_list() {
            let item = PriceItem::parse(item)?;
            let usage_type = item.product.attributes.get("usagetype");
            found.extend(item.hourly_usd()?.into_iter().map(|usd_per_hour| Found {
                usd_per_hour,
                usage_type: usage_type.cloned(),
            }));
        }
    }
    if found.len() == 1 {
        return Ok(found.remove(0));
    }
    if found.is_empty() {
        bail!(
            "the price list has no on-demand hourly price for {resource} ({query}): is it \
             offered in this region?"
        );
    }
    let prices: Vec<f64> = found.iter().map(|found| found.usd_per_hour).collect();
    bail!(
        "the price list has {} on-demand hourly prices for {resource} ({query}): {prices:?} \
         USD; expected one, so none is shown",
        found.len()
    )
}

/// One item of a GetProducts answer: a product and its terms, as a JSON string
/// (<https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/reading-service-price-list-file-for-services.html>).
#[derive(Debug, Deserialize)]
struct PriceItem {
    product: Product,
    #[serde(default)]
    terms: Terms,
}

#[derive(Debug, Deserialize)]
struct Product {
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct Terms {
    #[serde(rename = "OnDemand", default)]
    on_demand: BTreeMap<String, Offer>,
}

#[derive(Debug, Deserialize)]
struct Offer {
    #[serde(rename = "priceDimensions", default)]
    price_dimensions: BTreeMap<String, Dimension>,
}

#[derive(Debug, Deserialize)]
struct Dimension {
    unit: String,
    #[serde(rename = "pricePerUnit", default)]
    price_per_unit: BTreeMap<String, String>,
}

impl PriceItem {
    fn parse(item: &str) -> Result<Self> {
        serde_json::from_str(item).map_err(|err| {
            anyhow::anyhow!(
                "a GetProducts answer holds an item that is not a price list item: {err}"
            )
        })
    }

    /// Its on-demand prices by the hour, in USD.
    fn hourly_usd(&self) -> Result<Vec<f64>> {
        self.terms
            .on_demand
            .values()
            .flat_map(|offer| offer.price_dimensions.values())
            .filter(|dimension| dimension.unit == "Hrs")
            .map(|dimension| {
                let usd = dimension.price_per_unit.get("USD").map(String::as_str);
                usd.and_then(|usd| usd.parse::<f64>().ok())
                    .filter(|usd| usd.is_finite() && *usd >= 0.0)
                    .ok_or_else(|| {
                        anyhow::anyhow!("a price list item has no USD price by the hour: {usd:?}")
                    })
            })
            .collect()
    }
}

/// `amount` in dollars and cents.
pub fn dollars(amount: f64) -> String {
    format!("${amount:.2}")
}

#[cfg(test)]
mod tests;
