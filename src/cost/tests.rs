//! Pricing a stack against a mocked Price List: reading AWS's item format, the arithmetic
//! by the month, and refusing to guess when the filters leave no price or several.

use aws_sdk_pricing::operation::get_products::{GetProductsInput, GetProductsOutput};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use serde_json::json;

use super::*;
use crate::stack::testing;

/// A PriceList item as GetProducts returns it: the product and its on-demand terms, one
/// dimension per `(unit, USD)`. Prices here are made up for the tests.
fn item(attributes: serde_json::Value, dimensions: &[(&str, &str)]) -> String {
    let dimensions: serde_json::Map<String, serde_json::Value> = dimensions
        .iter()
        .enumerate()
        .map(|(index, (unit, usd))| {
            (
                format!("SKU.JRTCKXETXF.{index}"),
                json!({ "unit": unit, "pricePerUnit": { "USD": usd }, "description": "test" }),
            )
        })
        .collect();
    json!({
        "product": { "productFamily": "test", "attributes": attributes, "sku": "SKU" },
        "serviceCode": "test",
        "terms": {
            "OnDemand": { "SKU.JRTCKXETXF": { "priceDimensions": dimensions } },
            "Reserved": { "SKU.4NA7Y494T4": { "priceDimensions": {
                "SKU.4NA7Y494T4.1": { "unit": "Hrs", "pricePerUnit": { "USD": "0.0010000000" } }
            } } }
        }
    })
    .to_string()
}

fn filter<'a>(input: &'a GetProductsInput, field: &str) -> Option<&'a str> {
    input
        .filters()
        .iter()
        .find(|filter| filter.field() == field)
        .map(|filter| filter.value())
}

/// Answers each service's query with `items`, when its filters are the ones `priced`
/// sends for the example stack.
fn answering(service: &'static str, items: Vec<String>) -> Rule {
    mock!(aws_sdk_pricing::Client::get_products)
        .match_requests(move |input| {
            input.service_code() == Some(service)
                && input.filters().iter().all(|filter| {
                    *filter.r#type() == FilterType::TermMatch && !filter.value().is_empty()
                })
                && filter(input, "regionCode") == Some("us-east-1")
        })
        .then_output(move || {
            GetProductsOutput::builder()
                .set_price_list(Some(items.clone()))
                .build()
        })
}

/// Answers `service`'s query with `item` alone, when it filters on each of `wanted`.
fn answering_only(
    service: &'static str,
    wanted: &'static [(&'static str, &'static str)],
    item: String,
) -> Rule {
    mock!(aws_sdk_pricing::Client::get_products)
        .match_requests(move |input| {
            input.service_code() == Some(service)
                && wanted
                    .iter()
                    .all(|(field, value)| filter(input, field) == Some(*value))
        })
        .then_output(move || {
            GetProductsOutput::builder()
                .price_list(item.clone())
                .build()
        })
}

fn the_example_stack_s_prices() -> Vec<Rule> {
    vec![
        answering(
            "AmazonEC2",
            vec![item(
                json!({ "instanceType": "t3.micro", "usagetype": "BoxUsage:t3.micro" }),
                &[("Hrs", "0.0104000000")],
            )],
        ),
        // A node's hours, by its usage type: the same node type and engine also list
        // Redis OSS Extended Support's surcharge by the node hour, which a query by
        // node type and engine alone would find too.
        answering_only(
            "AmazonElastiCache",
            &[
                ("instanceType", "cache.t4g.micro"),
                ("cacheEngine", "Redis"),
                ("usagetype", "NodeUsage:cache.t4g.micro"),
            ],
            item(
                json!({
                    "instanceType": "cache.t4g.micro",
                    "cacheEngine": "Redis",
                    "usagetype": "NodeUsage:cache.t4g.micro",
                }),
                &[("Hrs", "0.0160000000")],
            ),
        ),
        // Its hours, by the usage type of us-east-1 (no region code in front).
        answering_only(
            "AWSELB",
            &[
                ("usagetype", "LoadBalancerUsage"),
                ("productFamily", "Load Balancer-Application"),
            ],
            item(
                json!({ "usagetype": "LoadBalancerUsage" }),
                &[("Hrs", "0.0225000000")],
            ),
        ),
    ]
}

async fn cost_of(spec: &StackSpec, rules: &[Rule]) -> Result<Cost> {
    let pricing = mock_client!(aws_sdk_pricing, RuleMode::MatchAny, rules);
    monthly(&pricing, spec, "us-east-1").await
}

#[test]
fn an_item_s_on_demand_hourly_price_is_read_and_other_terms_are_not() {
    let hours = PriceItem::parse(&item(
        json!({ "usagetype": "USE2-BoxUsage:t3.micro" }),
        &[("Hrs", "0.0225000000"), ("LCU-Hrs", "0.008")],
    ))
    .unwrap();
    assert_eq!(hours.hourly_usd().unwrap(), vec![0.0225]);

    let no_usd = PriceItem::parse(&item(json!({}), &[("Hrs", "")])).unwrap();
    assert!(no_usd.hourly_usd().is_err());
    assert!(PriceItem::parse("not json").is_err());
}

#[test]
fn the_region_s_billing_code_comes_from_the_instance_s_usage_type() {
    assert_eq!(
        billing_code(Some("USE2-BoxUsage:t3.micro")).unwrap(),
        "USE2-"
    );
    assert_eq!(billing_code(Some("BoxUsage:t3.micro")).unwrap(), "");
    assert!(billing_code(Some("HostUsage:t3")).is_err());
    assert!(billing_code(None).is_err());
}

#[tokio::test]
async fn the_example_stack_costs_its_instances_nodes_and_load_balancer_hours() {
    let spec = testing::spec();
    let cost = cost_of(&spec, &the_example_stack_s_prices()).await.unwrap();

    let line = |resource: &str| {
        cost.lines
            .iter()
            .find(|line| line.resource == resource)
            .unwrap_or_else(|| panic!("{resource} in {cost:#?}"))
            .clone()
    };
    // 2 × t3.micro, 730 hours at 0.0104.
    let instances = line("instances");
    assert_eq!((instances.count, instances.what.as_str()), (2, "t3.micro"));
    assert!(
        (instances.usd_per_month - 15.184).abs() < 1e-9,
        "{instances:?}"
    );
    // 1 shard × (1 primary + 1 replica) of cache.t4g.micro at 0.016.
    let nodes = line("redis nodes");
    assert_eq!(nodes.count, 2);
    assert!((nodes.usd_per_month - 23.36).abs() < 1e-9, "{nodes:?}");
    // The load balancer's hours.
    let load_balancer = line("load balancer");
    assert_eq!(load_balancer.usd_per_hour, 0.0225);
    assert!((load_balancer.usd_per_month - 16.425).abs() < 1e-9);

    assert!((cost.usd_per_month - 54.969).abs() < 1e-9, "{cost:?}");
    assert_eq!(dollars(cost.usd_per_month), "$54.97");
    assert_eq!(cost.usd_per_month_range, None);
    assert!(cost.not_included.contains("LCU"));
}

#[tokio::test]
async fn scaling_and_shards_multiply_what_they_should() {
    let mut spec = testing::spec();
    spec.scaling = Some(crate::spec::ScalingSpec {
        min: 1,
        max: 6,
        cpu_target_percent: 50,
    });
    spec.redis.shards = 3;
    spec.redis.replicas = 2;
    spec.redis.engine = "valkey".into();
    let valkey = answering_only(
        "AmazonElastiCache",
        &[("cacheEngine", "Valkey")],
        item(json!({}), &[("Hrs", "0.0128")]),
    );
    let rules = [vec![valkey], the_example_stack_s_prices()].concat();

    let cost = cost_of(&spec, &rules).await.unwrap();

    let nodes = &cost.lines[1];
    assert_eq!(
        (nodes.count, nodes.what.as_str()),
        (9, "cache.t4g.micro (valkey)")
    );
    assert!((nodes.usd_per_month - 9.0 * 0.0128 * 730.0).abs() < 1e-9);
    assert_eq!(cost.lines[0].range, Some((1, 6)));
    let fixed = nodes.usd_per_month + cost.lines[2].usd_per_month;
    let (low, high) = cost.usd_per_month_range.expect("a range with scaling");
    assert!((low - (fixed + 0.0104 * 730.0)).abs() < 1e-9);
    assert!((high - (fixed + 6.0 * 0.0104 * 730.0)).abs() < 1e-9);
    assert!((cost.usd_per_month - (fixed + 2.0 * 0.0104 * 730.0)).abs() < 1e-9);
}

#[tokio::test]
async fn no_price_or_several_is_an_error_naming_the_resource_and_the_filters() {
    let spec = testing::spec();
    let mut rules = the_example_stack_s_prices();
    rules[0] = answering("AmazonEC2", vec![]);
    let err = cost_of(&spec, &rules).await.unwrap_err().to_string();
    assert!(
        err.contains("no on-demand hourly price for instances t3.micro"),
        "{err}"
    );
    assert!(
        err.contains("ServiceCode=AmazonEC2, instanceType=t3.micro, regionCode=us-east-1"),
        "{err}"
    );

    let mut rules = the_example_stack_s_prices();
    let twice = item(
        json!({ "usagetype": "BoxUsage:t3.micro" }),
        &[("Hrs", "0.0104")],
    );
    rules[0] = answering("AmazonEC2", vec![twice.clone(), twice]);
    let err = cost_of(&spec, &rules).await.unwrap_err().to_string();
    assert!(
        err.contains("2 on-demand hourly prices for instances t3.micro"),
        "{err}"
    );
    assert!(err.contains("capacitystatus=Used"), "{err}");
}
