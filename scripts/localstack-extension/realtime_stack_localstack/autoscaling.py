"""LocalStack provider for EC2 Auto Scaling, served by the moto backend LocalStack bundles.

The LocalStack community edition refuses the Auto Scaling API ("not included in your
current license plan"); moto implements groups, launch templates, launching to the
desired capacity and target group attachment. Where moto departs from what AWS
documents, and the CLI or the local emulator relies on it, this module makes it hold:

- Zones. AWS "attempts to distribute instances evenly between the Availability Zones
  that are enabled for your Auto Scaling group ... by attempting to launch new instances
  in the Availability Zone with the fewest instances", and on scale in terminates from
  the zone with the most
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/auto-scaling-benefits.html#arch-AutoScalingMultiAZ,
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-termination-policies.html).
  moto launches every instance into the group's first subnet.
- What an instance is launched with: the version of the launch template the group
  names, with its metadata options, tags and volume tags, as RunInstances would apply
  them. moto takes some of it from the template's default version and leaves the
  metadata options out.
- Termination order on scale in: the termination policies `OldestLaunchTemplate` and
  `OldestInstance`, after the zone (termination policies page above). moto terminates
  the first instances of its list.
- Draining. An instance leaving a group attached to a target group is deregistered from
  it first, and terminated once the deregistration delay is over; meanwhile it is
  `Terminating` and its target lifecycle state `Terminated`
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/attach-load-balancer-asg.html,
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/retrieving-target-lifecycle-state-through-imds.html).
  moto terminates at once and leaves the instance registered.
- TerminateInstanceInAutoScalingGroup refuses to decrement the desired capacity below
  the group's minimum (ValidationError, API reference), and refuses while another
  instance of the group is still draining: its termination is a scaling activity in
  progress ("ScalingActivityInProgress: Activity ... is in progress", kubernetes/kops#6900;
  "if the ASG is configured to deregister a targetgroup ... the terminate request may fail
  with ScalingActivityInProgress", keikoproj/upgrade-manager#77). AWS may; here it always
  does, so that what follows a refusal is exercised.
- Health. SetInstanceHealth with `Unhealthy` makes AWS "terminate and replace the
  unhealthy instance", respecting the group's health check grace period unless told
  not to (https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetInstanceHealth.html,
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/health-check-grace-period.html).
  moto only records the status.
- Scaling activities: every launch and termination, with AWS's wording of its cause
  (https://docs.aws.amazon.com/autoscaling/ec2/userguide/as-verify-scaling-activity.html).
  moto answers DescribeScalingActivities with nothing.
- DeleteAutoScalingGroup refuses a group that still has instances unless `ForceDelete`
  (ResourceInUse), and one whose instances are still terminating
  (ScalingActivityInProgress), as the API reference says. moto deletes at once.
"""

import threading
import uuid

from localstack.aws.api import CommonServiceException
from localstack.aws.spec import load_service
from localstack.services.plugins import Service, aws_provider
from moto.autoscaling.models import (
    ASG_NAME_TAG,
    AutoScalingBackend,
    FakeAutoScalingGroup,
    InstanceState,
    autoscaling_backends,
)
from moto.core.types import Base64EncodedString
from moto.core.utils import utcnow
from moto.elbv2.models import elbv2_backends

from realtime_stack_localstack import forward_to_moto, moto_service

# Requests and the timers that end terminations change the same moto objects.
LOCK = threading.RLock()

# Lifecycle states of instances that count towards the group's capacity.
SERVING = ("Pending", "InService")


def validation_error(message):
    return CommonServiceException("ValidationError", message, status_code=400)


# ------------------------------------------------------------------ the group's model


def activities(group):
    if not hasattr(group, "realtime_stack_activities"):
        group.realtime_stack_activities = []
    return group.realtime_stack_activities


def record(group, description, cause, status="Successful"):
    """A scaling activity, newest first, as DescribeScalingActivities returns them."""
    now = utcnow()
    activity = {
        "ActivityId": str(uuid.uuid4()),
        "AutoScalingGroupName": group.name,
        "AutoScalingGroupARN": group.arn,
        "Description": description,
        "Cause": f"At {now.strftime('%Y-%m-%dT%H:%M:%SZ')} {cause}",
        "StartTime": now,
        "StatusCode": status,
        "Progress": 100 if status == "Successful" else 50,
        "Details": "{}",
    }
    if status == "Successful":
        activity["EndTime"] = now
    activities(group).insert(0, activity)
    return activity


def zone_of(group, subnet_id):
    return group.ec2_backend.get_subnet(subnet_id).availability_zone


def serving(group):
    return [state for state in group.instance_states if state.lifecycle_state in SERVING]


def launch_balanced(group, count, propagated_tags, cause=None):
    """Launches `count` instances one at a time, each into the subnet whose zone has the
    fewest of the group's serving instances, from the launch template version the group
    names, with everything that version sets. AWS does not document which of tied zones
    it picks: here they take turns."""
    subnets = group.vpc_zone_identifier.split(",") if group.vpc_zone_identifier else []
    if not subnets or group.ec2_launch_template is None:
        return ORIGINAL_LAUNCH(group, count, propagated_tags)
    version = group.ec2_launch_template.get_version(group.launch_template_version)
    data = version.data
    # moto keeps a new version's user-data as the request's string, the first version's
    # wrapped (which its run_instances wants).
    user_data = data.get("UserData")
    if isinstance(user_data, str):
        user_data = Base64EncodedString(user_data)
    tags = {"instance": {**propagated_tags, **version.instance_tags, ASG_NAME_TAG: group.name}}
    for spec in data.get("TagSpecifications") or []:
        if spec.get("ResourceType") == "volume":
            tags["volume"] = {tag["Key"]: tag["Value"] for tag in spec.get("Tags", [])}
    before = len(serving(group))
    for _ in range(count):
        per_zone = {}
        for state in serving(group):
            per_zone[state.instance.availability_zone] = per_zone.get(state.instance.availability_zone, 0) + 1
        turn = getattr(group, "realtime_stack_turn", 0)
        group.realtime_stack_turn = turn + 1
        subnet = min(
            subnets,
            key=lambda s: (per_zone.get(zone_of(group, s), 0), (subnets.index(s) - turn) % len(subnets)),
        )
        reservation = group.ec2_backend.run_instances(
            version.image_id,
            1,
            user_data,
            [],
            instance_type=version.instance_type,
            is_instance_type_default=False,
            tags={kind: dict(values) for kind, values in tags.items()},
            launch_template={
                "LaunchTemplateId": group.ec2_launch_template.id,
                "Version": str(version.number),
            },
            subnet_id=subnet,
            security_group_ids=list(data.get("SecurityGroupIds") or []),
            metadata_options=dict(data.get("MetadataOptions") or {}),
        )
        for instance in reservation.instances:
            instance.autoscaling_group = group
            group.instance_states.append(
                InstanceState(
                    instance,
                    protected_from_scale_in=group.new_instances_protected_from_scale_in,
                )
            )
            after = before + 1
            record(
                group,
                f"Launching a new EC2 instance: {instance.id}",
                cause
                or (
                    "an instance was started in response to a difference between desired "
                    f"and actual capacity, increasing the capacity from {before} to {after}."
                ),
            )
            before = after


def register_serving(backend, group_name):
    """Registers the group's serving instances with its target groups; instances on their
    way out stay deregistered."""
    group = backend.autoscaling_groups[group_name]
    elbv2 = elbv2_backends[group.account_id][group.region]
    for arn in group.target_group_arns:
        target_group = elbv2.target_groups.get(arn)
        if target_group is None:
            continue
        targets = [{"Id": state.instance.id, "Port": target_group.port} for state in serving(group)]
        if targets:
            elbv2.register_targets(arn, targets)


def deregistration_delay(group):
    """The longest deregistration delay of the group's target groups, in seconds."""
    elbv2 = elbv2_backends[group.account_id][group.region]
    delay = 0
    for arn in group.target_group_arns:
        target_group = elbv2.target_groups.get(arn)
        if target_group is not None:
            value = target_group.attributes.get("deregistration_delay.timeout_seconds", 300)
            delay = max(delay, int(value))
    return delay


def begin_termination(group, state, cause):
    """Takes `state` out of service: deregistered from the target groups at once, its
    instance terminated when the deregistration delay is over."""
    if state.lifecycle_state not in SERVING:
        return None
    state.lifecycle_state = "Terminating"
    instance = state.instance
    elbv2 = elbv2_backends[group.account_id][group.region]
    for arn in group.target_group_arns:
        if arn in elbv2.target_groups:
            elbv2.deregister_targets(arn, [{"Id": instance.id}])
    activity = record(
        group,
        f"Terminating EC2 instance: {instance.id}",
        cause,
        status="WaitingForELBConnectionDraining",
    )

    def finish():
        with LOCK:
            group.ec2_backend.terminate_instances([instance.id])
            group.instance_states = [s for s in group.instance_states if s is not state]
            activity["StatusCode"] = "Successful"
            activity["Progress"] = 100
            activity["EndTime"] = utcnow()

    timer = threading.Timer(deregistration_delay(group), finish)
    timer.daemon = True
    timer.start()
    return activity


def termination_order(group, states):
    """Which of `states` goes first on scale in: the zone with the most serving instances,
    then the group's termination policies (OldestLaunchTemplate, OldestInstance)."""
    per_zone = {}
    for state in serving(group):
        per_zone[state.instance.availability_zone] = per_zone.get(state.instance.availability_zone, 0) + 1
    current = str(group.ec2_launch_template.default_version_number) if group.ec2_launch_template else ""

    def version_of(state):
        return next(
            (tag["value"] for tag in state.instance.get_tags() if tag["key"] == "aws:ec2launchtemplate:version"),
            current,
        )

    def key(state):
        version = version_of(state)
        return (
            -per_zone.get(state.instance.availability_zone, 0),
            version == current,
            int(version) if version.isdigit() else 0,
            state.instance.launch_time,
        )

    return sorted(states, key=key)


def set_desired_capacity(group, new_capacity):
    """AWS's capacity follow-up: launch balanced, or scale in by zone and termination
    policy, each leaving instance drained before it is terminated."""
    group.desired_capacity = group.min_size if new_capacity is None else new_capacity
    missing = (group.desired_capacity or 0) - len(serving(group))
    if missing > 0:
        launch_balanced(group, missing, group.get_propagated_tags())
    for _ in range(-missing):
        candidates = [s for s in serving(group) if not s.protected_from_scale_in]
        if not candidates:
            break
        before = len(serving(group))
        begin_termination(
            group,
            termination_order(group, candidates)[0],
            "an instance was taken out of service in response to a difference between desired "
            f"and actual capacity, shrinking the capacity from {before} to {before - 1}.",
        )
    if group.name in group.autoscaling_backend.autoscaling_groups:
        register_serving(group.autoscaling_backend, group.name)


ORIGINAL_LAUNCH = FakeAutoScalingGroup.replace_autoscaling_group_instances
FakeAutoScalingGroup.replace_autoscaling_group_instances = launch_balanced
FakeAutoScalingGroup.set_desired_capacity = set_desired_capacity
AutoScalingBackend.update_attached_target_groups = register_serving


# ----------------------------------------------------------------------- the handlers


def backend_of(context):
    return autoscaling_backends[context.account_id][context.region]


def group_state(backend, instance_id):
    for group in backend.autoscaling_groups.values():
        for state in group.instance_states:
            if state.instance.id == instance_id:
                return group, state
    raise validation_error(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")


def activity_shape(activity):
    return {key: value for key, value in activity.items() if key != "AutoScalingGroupARN"}


def terminate_instance_in_auto_scaling_group(context, request):
    backend = backend_of(context)
    group, state = group_state(backend, request["InstanceId"])
    draining = next((a for a in activities(group) if a["StatusCode"] == "WaitingForELBConnectionDraining"), None)
    if draining is not None:
        raise CommonServiceException(
            "ScalingActivityInProgress",
            f"Activity {draining['ActivityId']} is in progress.",
            status_code=400,
        )
    decrement = request.get("ShouldDecrementDesiredCapacity")
    before = group.desired_capacity
    if decrement:
        if before - 1 < (group.min_size or 0):
            raise validation_error(
                f"Currently, desiredCapacity={before} and minSize={group.min_size}. Terminating "
                "instance without replacement will violate group's min size constraint. Either "
                "set shouldDecrementDesiredCapacity flag to false or lower group's min size."
            )
        group.desired_capacity = before - 1
        cause = (
            f"instance {state.instance.id} was taken out of service in response to a user request, "
            f"shrinking the capacity from {before} to {before - 1}."
        )
    else:
        cause = f"instance {state.instance.id} was taken out of service in response to a user request."
    activity = begin_termination(group, state, cause)
    if activity is None:
        raise CommonServiceException(
            "ScalingActivityInProgress",
            f"Instance {state.instance.id} is already {state.lifecycle_state}.",
            status_code=400,
        )
    set_desired_capacity(group, group.desired_capacity)
    return {"Activity": activity_shape(activity)}


def set_instance_health(context, request):
    backend = backend_of(context)
    group, state = group_state(backend, request["InstanceId"])
    if request["HealthStatus"] not in ("Healthy", "Unhealthy"):
        raise validation_error("Valid instance health states are: [Healthy, Unhealthy]")
    if state.lifecycle_state not in SERVING:
        return {}
    respect = request.get("ShouldRespectGracePeriod", True)
    age = (utcnow() - state.instance.launch_time).total_seconds()
    if respect and age < (group.health_check_grace_period or 0):
        return {}
    state.health_status = request["HealthStatus"]
    suspended = {process["ProcessName"] for process in group.suspended_processes}
    if state.health_status == "Unhealthy" and not suspended & {"HealthCheck", "ReplaceUnhealthy"}:
        begin_termination(
            group,
            state,
            "an instance was taken out of service in response to an ELB system health check failure.",
        )
        set_desired_capacity(group, group.desired_capacity)
    return {}


def describe_scaling_activities(context, request):
    backend = backend_of(context)
    names = [request["AutoScalingGroupName"]] if request.get("AutoScalingGroupName") else list(backend.autoscaling_groups)
    found = []
    for name in names:
        group = backend.autoscaling_groups.get(name)
        if group is not None:
            found.extend(activities(group))
    wanted = set(request.get("ActivityIds") or [])
    if wanted:
        found = [a for a in found if a["ActivityId"] in wanted]
    found.sort(key=lambda a: a["StartTime"], reverse=True)
    return {"Activities": [activity_shape(a) for a in found[: request.get("MaxRecords") or 100]]}


def delete_auto_scaling_group(context, request):
    backend = backend_of(context)
    name = request["AutoScalingGroupName"]
    group = backend.autoscaling_groups.get(name)
    if group is None:
        raise validation_error(f"AutoScalingGroup name not found - AutoScalingGroup '{name}' not found")
    if request.get("ForceDelete"):
        ids = [state.instance.id for state in group.instance_states]
        if ids:
            group.ec2_backend.terminate_instances(ids)
        backend.autoscaling_groups.pop(name, None)
        return {}
    if serving(group):
        raise CommonServiceException(
            "ResourceInUse",
            "You cannot delete an AutoScalingGroup while there are instances or pending Spot "
            "instance request(s) still in the group.",
            status_code=400,
        )
    if group.instance_states:
        raise CommonServiceException(
            "ScalingActivityInProgress",
            "You cannot delete an AutoScalingGroup while there are scaling activities in "
            "progress for that group.",
            status_code=400,
        )
    backend.autoscaling_groups.pop(name, None)
    return {}


def locked(handler):
    def run(context, request):
        with LOCK:
            return handler(context, request)

    return run


@aws_provider()
def autoscaling() -> Service:
    handlers = {operation: forward_to_moto for operation in load_service("autoscaling").operation_names}
    handlers.update(
        {
            "TerminateInstanceInAutoScalingGroup": terminate_instance_in_auto_scaling_group,
            "SetInstanceHealth": set_instance_health,
            "DescribeScalingActivities": describe_scaling_activities,
            "DeleteAutoScalingGroup": delete_auto_scaling_group,
        }
    )
    return moto_service("autoscaling", {name: locked(handler) for name, handler in handlers.items()})
