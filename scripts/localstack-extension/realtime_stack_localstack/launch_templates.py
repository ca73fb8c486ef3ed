"""Launch template versions deleted, as EC2 deletes them.

LocalStack's EC2 provider answers launch templates from moto, which has no
DeleteLaunchTemplateVersions, and whose DescribeLaunchTemplateVersions returns at most
`MaxResults` versions (15 when not given) with no `NextToken`. `up` deletes the
versions it no longer launches, and reads a template's versions a page at a time, so
this module gives the EC2 provider both operations as AWS documents them
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeleteLaunchTemplateVersions.html,
https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeLaunchTemplateVersions.html):

- The default version cannot be deleted: "you must first assign a different version as
  the default". Each version that is not deleted is an item of
  `UnsuccessfullyDeletedLaunchTemplateVersions` with a `ResponseError`, whose codes AWS
  lists (API_ResponseError.html); which of them the default version gets is not
  documented, so it gets `unexpectedError`.
- At most 200 versions a request (strict.py refuses more).
- A deleted version is gone: describing it, launching it or making it the default is
  refused with `InvalidLaunchTemplateId.VersionNotFound`, and a template's numbers go
  on from the highest ever made.

moto keeps a template's versions in a list indexed by number, so a deleted version stays
in it, marked, and is left out of every answer.
"""

from localstack.aws.api import CommonServiceException, RequestContext, handler
from localstack.runtime import hooks
from localstack.services.moto import call_moto_with_request
from moto.ec2.exceptions import InvalidLaunchTemplateVersionNotFound
from moto.ec2.models.launch_templates import LaunchTemplate

# The page DescribeLaunchTemplateVersions answers when `MaxResults` is not given; AWS
# documents 1 to 200 and no default, moto uses 15.
DEFAULT_PAGE = 15


def deleted(template: LaunchTemplate) -> set[int]:
    if not hasattr(template, "realtime_stack_deleted"):
        template.realtime_stack_deleted = set()
    return template.realtime_stack_deleted


def template_of(context: RequestContext, request: dict) -> LaunchTemplate | None:
    from localstack.services.ec2.models import get_ec2_backend

    backend = get_ec2_backend(context.account_id, context.region)
    template_id = request.get("LaunchTemplateId") or backend.launch_template_name_to_ids.get(
        request.get("LaunchTemplateName") or ""
    )
    return backend.launch_templates.get(template_id or "")


def failure(request: dict, version: str, code: str, message: str) -> dict:
    item = {"VersionNumber": int(version) if version.isdigit() else 0}
    for key in ("LaunchTemplateId", "LaunchTemplateName"):
        if request.get(key):
            item[key] = request[key]
    return {**item, "ResponseError": {"Code": code, "Message": message}}


@handler("DeleteLaunchTemplateVersions", expand=False)
def delete_launch_template_versions(_provider, context: RequestContext, request: dict) -> dict:
    template = template_of(context, request)
    done, failed = [], []
    for version in request.get("Versions") or []:
        if template is None:
            code = "launchTemplateIdDoesNotExist" if request.get("LaunchTemplateId") else "launchTemplateNameDoesNotExist"
            failed.append(failure(request, version, code, "The launch template does not exist."))
            continue
        number = int(version) if version.isdigit() else 0
        if not 1 <= number <= len(template.versions) or number in deleted(template):
            failed.append(
                failure(
                    request,
                    version,
                    "launchTemplateVersionDoesNotExist",
                    f"The launch template version {version} does not exist.",
                )
            )
        elif number == template.default_version_number:
            failed.append(
                failure(
                    request,
                    version,
                    "unexpectedError",
                    "The default version of a launch template cannot be deleted; "
                    "make another version the default first.",
                )
            )
        else:
            deleted(template).add(number)
            done.append(
                {
                    "LaunchTemplateId": template.id,
                    "LaunchTemplateName": template.name,
                    "VersionNumber": number,
                }
            )
    return {
        "SuccessfullyDeletedLaunchTemplateVersions": done,
        "UnsuccessfullyDeletedLaunchTemplateVersions": failed,
    }


@handler("DescribeLaunchTemplateVersions", expand=False)
def describe_launch_template_versions(_provider, context: RequestContext, request: dict) -> dict:
    """moto's answer with the deleted versions left out, a page of `MaxResults` at a
    time, the rest behind a `NextToken` (the index of the next version to answer)."""
    page = request.get("MaxResults") or DEFAULT_PAGE
    start = int(request.get("NextToken") or 0)
    moto_request = {key: value for key, value in request.items() if key != "NextToken"}
    moto_request["MaxResults"] = 1_000_000
    answered = call_moto_with_request(context, moto_request)
    versions = [
        version
        for version in answered.get("LaunchTemplateVersions", [])
        if not is_deleted(context, version)
    ]
    response = {"LaunchTemplateVersions": versions[start : start + page]}
    if start + page < len(versions):
        response["NextToken"] = str(start + page)
    return response


def is_deleted(context: RequestContext, version: dict) -> bool:
    template = template_of(context, {"LaunchTemplateId": version.get("LaunchTemplateId")})
    return template is not None and version.get("VersionNumber") in deleted(template)


def version_not_found(template: LaunchTemplate, version) -> CommonServiceException:
    return CommonServiceException(
        "InvalidLaunchTemplateId.VersionNotFound",
        f"Could not find the specified version {version} for the launch template with ID {template.id}.",
        status_code=400,
    )


def modify_launch_template_of(original):
    @handler("ModifyLaunchTemplate", expand=False)
    def modify_launch_template(provider, context: RequestContext, request: dict) -> dict:
        """A deleted version cannot be made the default (moto's list still holds it)."""
        template = template_of(context, request)
        version = request.get("DefaultVersion") or ""
        if template is not None and version.isdigit() and int(version) in deleted(template):
            raise version_not_found(template, version)
        return original(provider, context, request)

    return modify_launch_template


ORIGINAL_GET_VERSION = LaunchTemplate.get_version


def get_version(template: LaunchTemplate, number):
    """A deleted version is not found, whether described, launched or made the default."""
    version = ORIGINAL_GET_VERSION(template, number)
    if version.number in deleted(template):
        raise InvalidLaunchTemplateVersionNotFound(template_id=template.id, version=number)
    return version


@hooks.on_infra_start()
def install_launch_template_versions():
    from localstack.services.ec2.provider import Ec2Provider

    Ec2Provider.delete_launch_template_versions = delete_launch_template_versions
    Ec2Provider.describe_launch_template_versions = describe_launch_template_versions
    Ec2Provider.modify_launch_template = modify_launch_template_of(Ec2Provider.modify_launch_template)
    LaunchTemplate.get_version = get_version
