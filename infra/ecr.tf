# Where the router's image goes (`make push`): one ECR repository. Tags are immutable, so a task definition that
# names a version always runs the bytes that were pushed (and tested) under it; every push is scanned; images are
# encrypted with KMS; a lifecycle policy bounds what the repository keeps.

resource "aws_ecr_repository" "router" {
  name                 = "${var.name}-router"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.ecr_force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = var.ecr_kms_key_arn # null: the account's AWS-managed key for ECR
  }

  tags = local.tags
}

resource "aws_ecr_lifecycle_policy" "router" {
  repository = aws_ecr_repository.router.name
  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Untagged images (a push's superseded layers) after ${var.ecr_untagged_days} days"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = var.ecr_untagged_days
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "The newest ${var.ecr_keep_images} images, enough to roll back"
        selection = {
          tagStatus   = "any"
          countType   = "imageCountMoreThan"
          countNumber = var.ecr_keep_images
        }
        action = { type = "expire" }
      },
    ]
  })
}
