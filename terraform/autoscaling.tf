# Postgres mode only: target tracking keeps average CPU and ALB requests per
# task near their targets, between autoscaling_min_tasks and
# autoscaling_max_tasks. Journal mode never scales: one writer.

resource "aws_appautoscaling_target" "app" {
  count              = local.postgres && !var.emulator_unsupported_off ? 1 : 0
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.main.name}/${aws_ecs_service.app.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.autoscaling_min_tasks
  max_capacity       = var.autoscaling_max_tasks
}

locals {
  scaling_policy_definitions = {
    cpu = {
      metric = "ECSServiceAverageCPUUtilization"
      label  = null
      target = var.autoscaling_cpu_target_percent
    }
    requests = {
      metric = "ALBRequestCountPerTarget"
      label  = "${aws_lb.main.arn_suffix}/${aws_lb_target_group.app.arn_suffix}"
      target = var.autoscaling_requests_per_target
    }
  }
  scaling_policies = { for name, policy in local.scaling_policy_definitions : name => policy if length(aws_appautoscaling_target.app) == 1 }
}

resource "aws_appautoscaling_policy" "app" {
  for_each           = local.scaling_policies
  name               = "${var.name_prefix}-${each.key}"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.app[0].service_namespace
  resource_id        = aws_appautoscaling_target.app[0].resource_id
  scalable_dimension = aws_appautoscaling_target.app[0].scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = each.value.target
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = each.value.metric
      resource_label         = each.value.label
    }
  }
}
