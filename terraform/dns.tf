# Optional (domain_name and hosted_zone_id given): an ACM certificate for the
# name, validated through DNS records in the hosted zone, used by the HTTPS
# listener (alb.tf), and an alias record from the name to the ALB.

locals {
  dns_enabled = var.domain_name != ""
  certificate_validation = {
    for option in(local.dns_enabled ? aws_acm_certificate.service[0].domain_validation_options : []) : option.domain_name => option
  }
}

resource "aws_acm_certificate" "service" {
  count             = local.dns_enabled ? 1 : 0
  domain_name       = var.domain_name
  validation_method = "DNS"

  lifecycle {
    create_before_destroy = true
  }
}

# Keyed by the configured name (known at plan), not by the certificate's
# validation options (known only once the certificate exists).
resource "aws_route53_record" "certificate_validation" {
  for_each        = local.dns_enabled ? toset([var.domain_name]) : toset([])
  zone_id         = var.hosted_zone_id
  name            = local.certificate_validation[each.key].resource_record_name
  type            = local.certificate_validation[each.key].resource_record_type
  records         = [local.certificate_validation[each.key].resource_record_value]
  ttl             = 300
  allow_overwrite = true
}

resource "aws_acm_certificate_validation" "service" {
  count                   = local.dns_enabled ? 1 : 0
  certificate_arn         = aws_acm_certificate.service[0].arn
  validation_record_fqdns = [for record in aws_route53_record.certificate_validation : record.fqdn]
}

resource "aws_route53_record" "service" {
  count   = local.dns_enabled ? 1 : 0
  zone_id = var.hosted_zone_id
  name    = var.domain_name
  type    = "A"

  alias {
    name                   = aws_lb.main.dns_name
    zone_id                = aws_lb.main.zone_id
    evaluate_target_health = true
  }
}
